//! isthmus-xds
