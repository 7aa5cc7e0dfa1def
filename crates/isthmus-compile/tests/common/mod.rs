//! Shared helpers for the golden and scenario tests: load a case directory, build the snapshot,
//! resolve the proxies listed in `proxies.txt` and compile them.
#![allow(dead_code)]

use isthmus_api::{find_mesh_config, load_paths, LoadOptions, MeshConfig};
use isthmus_compile::{compile, CompiledProxy};
use isthmus_model::Snapshot;
use std::path::{Path, PathBuf};

pub fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

pub struct Case {
    pub snapshot: Snapshot,
    /// (label, compiled proxy)
    pub proxies: Vec<(String, CompiledProxy)>,
    pub build_diagnostics: Vec<isthmus_api::Diagnostic>,
}

pub fn snapshot_from_str(yaml: &str, domain: &str) -> Snapshot {
    let loaded = isthmus_api::load_str("inline.yaml", yaml, &LoadOptions::default());
    assert!(
        loaded.rejections.is_empty(),
        "rejected: {:?}",
        loaded.rejections
    );
    let mesh = find_mesh_config(&loaded.objects)
        .map(|(_, m)| MeshConfig::from_yaml(m).expect("mesh"))
        .unwrap_or_default();
    Snapshot::build(&loaded.objects, mesh, domain).0
}

pub fn load_case(name: &str) -> Case {
    let dir = case_dir(name);
    let loaded = load_paths(&[dir.join("input.yaml")], &LoadOptions::default()).expect("load");
    assert!(
        loaded.rejections.is_empty(),
        "{name}: rejected objects: {:?}",
        loaded.rejections
    );
    let mesh = find_mesh_config(&loaded.objects)
        .map(|(_, m)| MeshConfig::from_yaml(m).expect("mesh config"))
        .unwrap_or_default();
    let spec = std::fs::read_to_string(dir.join("proxies.txt")).expect("proxies.txt");
    let mut domain = "cluster.local".to_string();
    let mut targets = Vec::new();
    for line in spec
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts[0] == "domain" {
            domain = parts[1].to_string();
            continue;
        }
        targets.push((
            parts[0].to_string(),
            parts[1].to_string(),
            parts.get(2).map(|s| s.to_string()),
        ));
    }
    let (snapshot, build_diagnostics) = Snapshot::build(&loaded.objects, mesh, &domain);
    let mut proxies = Vec::new();
    for (label, target, ns) in targets {
        let node = snapshot
            .resolve_proxy(&target, ns.as_deref())
            .unwrap_or_else(|e| panic!("{name}: {target}: {e}"));
        proxies.push((label, compile(&snapshot, &node)));
    }
    Case {
        snapshot,
        proxies,
        build_diagnostics,
    }
}

impl Case {
    pub fn proxy(&self, label: &str) -> &CompiledProxy {
        &self
            .proxies
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no proxy {label}"))
            .1
    }
    pub fn json(&self, label: &str, what: &str) -> serde_json::Value {
        let out = isthmus_compile::render(
            &self.proxy(label).config,
            what.parse().unwrap(),
            &Default::default(),
            isthmus_compile::Format::Json,
        )
        .unwrap();
        serde_json::from_str(&out).unwrap()
    }
}
