//! isthmus-analyze
