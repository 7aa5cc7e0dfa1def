//! isthmus-model
