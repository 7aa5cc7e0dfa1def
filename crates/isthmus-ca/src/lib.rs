//! isthmus-ca
