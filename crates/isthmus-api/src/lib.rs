//! isthmus-api
