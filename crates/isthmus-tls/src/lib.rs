//! isthmus-tls
