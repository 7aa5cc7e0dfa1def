//! The proxy's own HTTP/1.1 codec: framing in [`codec`], the downstream connection loop in
//! [`server`], upstream exchanges for the pool in [`client`]. See `server`'s docs for what is handed to hyper instead.

pub mod client;
pub mod codec;
pub mod server;
