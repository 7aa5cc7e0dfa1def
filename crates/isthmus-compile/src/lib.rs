//! isthmus-compile
