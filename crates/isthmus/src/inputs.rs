//! Loading manifests for offline commands (`proxy-config -f`, `analyze`, `trace`): the same
//! loader as `validate`, plus the mesh config (from `--mesh-config` or the `istio` ConfigMap)
//! and the registry snapshot.

use anyhow::Context;
use isthmus_api::{find_mesh_config, load_paths, LoadOptions, Loaded, MeshConfig, Severity};
use isthmus_model::Snapshot;
use std::path::PathBuf;

/// Flags shared by commands that compile manifests offline.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// DNS domain suffix of the mesh (istiod's `--domain`); the seeds use homelab.local.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// MeshConfig YAML file; overrides the `istio` ConfigMap in istio-system.
    #[arg(long = "mesh-config")]
    pub mesh_config: Option<PathBuf>,
}

/// Loads the files; prints every rejection (kubectl's text) and error to stderr. Rejected
/// objects are left out, as the API server would leave them out.
pub fn load(files: &[PathBuf], mesh_args: &MeshArgs) -> anyhow::Result<(Loaded, MeshConfig)> {
    let loaded = load_paths(files, &LoadOptions::default())?;
    for r in &loaded.rejections {
        eprintln!("{}", r.message);
    }
    for d in loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity != Severity::Info)
    {
        eprintln!("{d}");
    }
    let mesh = match &mesh_args.mesh_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading mesh config {}", path.display()))?;
            MeshConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => match find_mesh_config(&loaded.objects) {
            Some((obj, text)) => MeshConfig::from_yaml(text).map_err(|e| {
                anyhow::anyhow!(
                    "{}:{}: ConfigMap istio-system/istio data.mesh: {e}",
                    obj.source.file,
                    obj.source.line
                )
            })?,
            None => MeshConfig::default(),
        },
    };
    Ok((loaded, mesh))
}

/// Builds the registry snapshot, printing its diagnostics as warnings.
pub fn snapshot(loaded: &Loaded, mesh: MeshConfig, domain: &str) -> Snapshot {
    let (snap, diags) = Snapshot::build(&loaded.objects, mesh, domain);
    for d in diags {
        eprintln!("{d}");
    }
    snap
}
