//! The proxy's own HTTP/1.1 codec (downstream server side): framing in [`codec`], the
//! connection loop in [`server`]. See `server`'s docs for what is handed to hyper instead.

pub mod codec;
pub mod server;
