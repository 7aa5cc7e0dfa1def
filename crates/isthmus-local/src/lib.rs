//! isthmus-local
