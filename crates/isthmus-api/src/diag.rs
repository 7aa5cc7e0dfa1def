//! Located diagnostics shared by validation, compilation and analysis.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// Where a problem comes from. The stage decides how a user-facing message is framed
/// (kubectl's schema texts, the strict decoder's text, or Istio's webhook text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The file could not be read or parsed as YAML/JSON.
    Syntax,
    /// The object lacks apiVersion/kind/name or is not an object.
    Envelope,
    /// Unknown field (kubectl's strict decoding error).
    StrictDecoding,
    /// OpenAPI schema / CEL rules of the CRD (kubectl's "is invalid" texts).
    Schema,
    /// Istio's validating webhook (`configuration is invalid: ...`).
    Webhook,
    /// Informational notes from loading (e.g. unknown kinds skipped).
    Load,
}

/// One problem with a precise location.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub code: String,
    pub severity: Severity,
    pub stage: Stage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl Diagnostic {
    /// `kind ns/name` when known, for messages.
    pub fn object_label(&self) -> Option<String> {
        let kind = self.kind.as_deref()?;
        let name = self.name.as_deref().unwrap_or("<unnamed>");
        Some(match &self.namespace {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: ",
            self.file, self.line, self.column, self.severity
        )?;
        if let Some(label) = self.object_label() {
            write!(f, "({label}) ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}
