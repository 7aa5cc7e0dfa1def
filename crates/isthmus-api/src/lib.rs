//! isthmus-api: reading Istio and Kubernetes manifests exactly as the API server and Istio's
//! webhook would — YAML/JSON loading with a location for every node, typed kinds, CRD schema
//! validation with kubectl's texts, and Istio's semantic validation.
//!
//! ```no_run
//! use isthmus_api::{load_paths, LoadOptions};
//! let loaded = load_paths(&["examples/egress-double-mtls".into()], &LoadOptions::default()).unwrap();
//! for r in &loaded.rejections { eprintln!("{}", r.message); }
//! for o in &loaded.objects { println!("{}", o.label()); }
//! ```

pub mod diag;
pub mod istio;
pub mod k8s;
pub mod load;
pub mod mesh;
pub mod object;
pub mod schema;
pub mod validation;
pub mod yaml;

pub use diag::{Diagnostic, Severity, Stage};
pub use load::{expand_paths, load_paths, load_str, LoadError, LoadOptions, Loaded, Rejection};
pub use mesh::MeshConfig;
pub use object::{find_mesh_config, Body, Kind, Object, ObjectMeta, Source};
