//! isthmus's own analyzers (codes ISM0001+).
use crate::Analyzer;
pub(crate) static ALL: &[Analyzer] = &[];
