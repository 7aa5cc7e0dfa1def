//! The shape of the generated schema table (`generated.rs`).
//!
//! The table is a flat arena of [`Node`]s referencing each other by index, emitted by
//! [`super::codegen`] from Istio's CRD file. Identical subtrees are stored once, so the three
//! served versions of a kind (which carry the same schema) share one root.

/// "No node" marker for [`Node::items`] and [`Node::not`].
pub const NONE: u32 = u32::MAX;

/// The OpenAPI `type` of a node as kube-openapi sees it after apiextensions' conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// No `type` (only value validations such as `required` inside `oneOf`).
    None,
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
    /// `x-kubernetes-int-or-string: true`: apiextensions validates it as `type: [integer, string]`.
    IntOrString,
}

impl Ty {
    /// The type names kube-openapi's type validator checks against (`strings.Join(t.Type, ",")`).
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Ty::None => &[],
            Ty::Object => &["object"],
            Ty::Array => &["array"],
            Ty::String => &["string"],
            Ty::Integer => &["integer"],
            Ty::Number => &["number"],
            Ty::Boolean => &["boolean"],
            Ty::IntOrString => &["integer", "string"],
        }
    }

    /// The structural schema type string (CEL uses it as the bad value of a failed rule).
    pub fn structural(self) -> &'static str {
        match self {
            Ty::None | Ty::IntOrString => "",
            Ty::Object => "object",
            Ty::Array => "array",
            Ty::String => "string",
            Ty::Integer => "integer",
            Ty::Number => "number",
            Ty::Boolean => "boolean",
        }
    }
}

/// A `format` that survives apiextensions' `StripUnsupportedFormatsPostProcess` and so is
/// validated. `int32`, `int64`, `float` and `double` are stripped (no range checks happen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    None,
    /// base64 (`strfmt` "byte"): Go's `base64.StdEncoding.DecodeString` must accept it.
    Byte,
    /// RFC 3339 date-time (only used under `status`, which a create drops).
    DateTime,
}

impl Fmt {
    pub fn name(self) -> &'static str {
        match self {
            Fmt::None => "",
            Fmt::Byte => "byte",
            Fmt::DateTime => "date-time",
        }
    }
}

/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListType {
    None,
    Atomic,
    Set,
    Map(&'static [&'static str]),
}

/// One `x-kubernetes-validations` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleDef {
    pub rule: &'static str,
    pub message: &'static str,
}

/// One schema node (descriptions dropped).
#[derive(Debug, Clone, Copy)]
pub struct Node {
    pub ty: Ty,
    pub format: Fmt,
    pub nullable: bool,
    /// `enum` values (Istio's enums are all strings; the generator refuses others).
    pub enum_values: &'static [&'static str],
    pub required: &'static [&'static str],
    /// Sorted by (name length, name): the binary search compares lengths first, so most
    /// probes never compare bytes.
    pub properties: &'static [(&'static str, u32)],
    pub items: u32,
    /// `additionalProperties` schema, or [`NONE`].
    pub additional: u32,
    pub all_of: &'static [u32],
    pub one_of: &'static [u32],
    pub any_of: &'static [u32],
    pub not: u32,
    pub max_items: Option<u64>,
    pub min_items: Option<u64>,
    pub max_length: Option<u64>,
    pub min_length: Option<u64>,
    pub max_properties: Option<u64>,
    pub min_properties: Option<u64>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub preserve_unknown: bool,
    pub list_type: ListType,
    /// Indices into the rule table.
    pub rules: &'static [u32],
}

/// The empty node, used with struct-update syntax by the generated table.
pub const E: Node = Node {
    ty: Ty::None,
    format: Fmt::None,
    nullable: false,
    enum_values: &[],
    required: &[],
    properties: &[],
    items: NONE,
    additional: NONE,
    all_of: &[],
    one_of: &[],
    any_of: &[],
    not: NONE,
    max_items: None,
    min_items: None,
    max_length: None,
    min_length: None,
    max_properties: None,
    min_properties: None,
    minimum: None,
    maximum: None,
    exclusive_minimum: false,
    exclusive_maximum: false,
    preserve_unknown: false,
    list_type: ListType::None,
    rules: &[],
};

impl Node {
    /// The schema of a named property, if declared.
    pub fn property(&self, name: &str) -> Option<u32> {
        let props = self.properties;
        if props.len() <= 8 {
            // Short lists: a length check rejects most names without comparing bytes.
            return props
                .iter()
                .find(|(k, _)| k.len() == name.len() && *k == name)
                .map(|(_, i)| *i);
        }
        props
            .binary_search_by(|(k, _)| k.len().cmp(&name.len()).then_with(|| (*k).cmp(name)))
            .ok()
            .map(|i| props[i].1)
    }

    /// The structural schema of a map entry: the property if declared, else
    /// `additionalProperties` (what pruning and null-pruning use).
    pub fn field_schema(&self, name: &str) -> Option<u32> {
        self.property(name).or(if self.additional == NONE {
            None
        } else {
            Some(self.additional)
        })
    }
}
