//! isthmus-proxy
