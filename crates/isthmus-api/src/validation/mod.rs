//! Istio's validating-webhook checks (`pkg/config/validation/validation.go`): the semantic rules
//! the CRD schema cannot express. Errors are joined as istiod joins them; warnings are kept apart.

use crate::object::{Body, Object};

/// One webhook finding, with the field it concerns when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub field: Option<String>,
    pub message: String,
}

/// Errors refuse the object; warnings are printed (`Warning: ...` in kubectl) but accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Report {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Finding { field: Some(field.into()), message: message.into() });
    }
}

/// Joins several errors the way hashicorp/go-multierror prints them (istiod uses it); a single
/// error is printed bare.
pub fn join_errors(errors: &[Finding]) -> String {
    if errors.len() == 1 {
        return errors[0].message.clone();
    }
    let mut s = format!("{} errors occurred:\n", errors.len());
    for e in errors {
        s.push_str(&format!("\t* {}\n", e.message));
    }
    s.push('\n');
    s
}

/// Runs the webhook checks for one object.
pub fn validate_object(obj: &Object) -> Report {
    let mut r = Report::default();
    if let Body::DestinationRule(dr) = &obj.body {
        if dr.host.is_empty() {
            r.error("spec.host", "invalid host: host cannot be empty");
        }
    }
    r
}
