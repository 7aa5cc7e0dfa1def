//! `isthmus analyze PATH...` / `isthmus analyze --name MESH`: Istio's analyzer messages (IST
//! codes, istioctl's format) and isthmus's own checks for the seeds' silent traps (ISM codes),
//! on files or on the config a running mesh holds right now (after every `isthmus apply`).

use crate::inputs::MeshArgs;
use isthmus_analyze::{
    analysis_input, analyze, exceeds_threshold, filter_output, load_for_analysis, AnalyzeOptions,
    Level, OutputFormat,
};
use isthmus_supervisor::api::{self, Request, Response};
use isthmus_supervisor::state;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Every kind the supervisor holds, in the order a manifest directory usually lists them.
const LIVE_KINDS: &[&str] = &[
    "Namespace",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Service",
    "Deployment",
    "Pod",
    "WorkloadEntry",
    "ServiceEntry",
    "Gateway",
    "VirtualService",
    "DestinationRule",
    "Sidecar",
];

/// One request to the supervisor of mesh `name` (state root `$ISTHMUS_STATE_DIR`).
pub(crate) fn mesh_call(name: &str, req: &Request) -> anyhow::Result<Response> {
    let dir = state::MeshDir::new(&state::state_root(), name);
    Ok(api::call(
        name,
        &dir.socket(),
        req,
        Duration::from_secs(10),
    )?)
}

/// The configuration a running mesh holds: every object as one `kind: List` JSON text (the
/// loaders read it like a file), and the mesh's DNS domain.
pub(crate) struct LiveConfig {
    pub text: String,
    pub domain: String,
}

/// Said when the supervisor cannot report its mesh config (it always can today; kept so an
/// analysis never silently assumes defaults).
pub(crate) fn default_mesh_note(name: &str) -> String {
    format!(
        "note: mesh {name:?} did not report its mesh config: using Istio's default mesh config (if it was started with --mesh-config FILE, pass the same --mesh-config FILE here)"
    )
}

/// The `istio` ConfigMap (istio-system, `data.mesh`) a loader reads the mesh config from —
/// synthesized for a live mesh started with `--mesh-config FILE`, whose objects hold none.
fn mesh_config_map(mesh: &isthmus_api::MeshConfig) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": serde_json::to_string_pretty(mesh)?},
    }))
}

/// Reads the live objects from the supervisor (`Request::Objects` per kind), so analysis and
/// trace see exactly what the proxies were compiled from, `isthmus apply` changes included.
pub(crate) fn live_config(name: &str) -> anyhow::Result<LiveConfig> {
    let Response::Status(status) = mesh_call(name, &Request::Status)? else {
        anyhow::bail!("unexpected answer from the supervisor of mesh {name:?} (status)");
    };
    let mut items = Vec::new();
    for kind in LIVE_KINDS {
        let Response::Objects { objects } = mesh_call(
            name,
            &Request::Objects {
                kind: kind.to_string(),
            },
        )?
        else {
            anyhow::bail!("unexpected answer from the supervisor of mesh {name:?} (objects)");
        };
        items.extend(objects);
    }
    let has_mesh_config = items.iter().any(|o| {
        o["kind"] == "ConfigMap"
            && o["metadata"]["name"] == "istio"
            && o["metadata"]["namespace"] == "istio-system"
    });
    if !has_mesh_config {
        if let Response::MeshConfig { mesh } = mesh_call(name, &Request::MeshConfig)? {
            items.push(mesh_config_map(&mesh)?);
        }
    }
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
    }))?;
    Ok(LiveConfig {
        text,
        domain: status.domain,
    })
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files or directories to analyze.
    pub paths: Vec<PathBuf>,
    /// More files or directories (istioctl's `-f`).
    #[arg(short = 'f', long = "filename", num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Only report on this namespace.
    #[arg(short = 'n', long = "namespace", conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Report on all namespaces (the default for files).
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// text, json or yaml.
    #[arg(short = 'o', long = "output", default_value = "text")]
    pub output: String,
    /// Exit 1 when a message at or above this level is found: Info, Warning or Error.
    #[arg(long = "failure-threshold", default_value = "Error")]
    pub failure_threshold: String,
    /// Print only messages at or above this level.
    #[arg(long = "output-threshold", default_value = "Info")]
    pub output_threshold: String,
    /// Run only Istio's analyzers (no ISM checks).
    #[arg(long = "istio-only")]
    pub istio_only: bool,
    /// Analyze the live config of this running mesh (`isthmus up --name`) instead of files;
    /// like istioctl against a cluster, only namespace `default` unless `-n NS` or `-A`.
    #[arg(long, conflicts_with_all = ["paths", "files"])]
    pub name: Option<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let format = OutputFormat::parse(&args.output).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown output format {:?} (use text, json or yaml)",
            args.output
        )
    })?;
    let failure = Level::parse(&args.failure_threshold).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown level {:?} (use Info, Warning or Error)",
            args.failure_threshold
        )
    })?;
    let output_level = Level::parse(&args.output_threshold).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown level {:?} (use Info, Warning or Error)",
            args.output_threshold
        )
    })?;
    let mut paths = args.paths.clone();
    paths.extend(args.files.iter().cloned());
    // Live: cluster objects always have a namespace, and istioctl reports on the current
    // namespace (`default`) unless told otherwise.
    let (input, namespace, domain, scope) = match &args.name {
        Some(name) => {
            let live = live_config(name)?;
            let input = analysis_input(vec![(String::new(), live.text)], Some("default"));
            if args.mesh.mesh_config.is_none()
                && isthmus_api::find_mesh_config(&input.objects).is_none()
            {
                eprintln!("{}", default_mesh_note(name));
            }
            let ns = if args.all_namespaces {
                None
            } else {
                Some(args.namespace.clone().unwrap_or_else(|| "default".into()))
            };
            let scope = match &ns {
                Some(n) => format!("namespace: {n}"),
                None => "all namespaces".to_string(),
            };
            (input, ns, live.domain, Some(scope))
        }
        None => {
            if paths.is_empty() {
                anyhow::bail!(
                    "nothing to analyze: give files or directories (isthmus analyze DIR), or a running mesh (isthmus analyze --name MESH)"
                );
            }
            // istioctl analyzes objects even when the webhook would refuse them (and reports
            // that as IST0106 etc.), so use the analysis loader rather than the admission one.
            let input = load_for_analysis(&paths, None)?;
            (
                input,
                args.namespace.clone(),
                args.mesh.domain.clone(),
                None,
            )
        }
    };
    for note in &input.notes {
        eprintln!("note: {note}");
    }
    let mesh = match &args.mesh.mesh_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading mesh config {}: {e}", path.display()))?;
            isthmus_api::MeshConfig::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => input.mesh.clone(),
    };
    let opts = AnalyzeOptions {
        namespace,
        isthmus_analyzers: !args.istio_only,
        sources: input.sources.clone(),
        domain_suffix: domain,
        request_authentications: input.request_authentications.clone(),
        ..AnalyzeOptions::default()
    };
    let msgs = analyze(&input.objects, &mesh, &opts);
    let shown = filter_output(&msgs, output_level);
    let mut out = format.render(&shown);
    if let (Some(scope), true) = (&scope, shown.is_empty()) {
        // istioctl's wording for a cluster: what was analyzed is a namespace, not files.
        out = out.replace("the given files", scope);
    }
    print!("{out}");
    let failed = exceeds_threshold(&msgs, failure);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
