//! `isthmus analyze PATH...`: Istio's analyzer messages (IST codes, istioctl's format) and
//! isthmus's own checks for the seeds' silent traps (ISM codes).

use crate::inputs::MeshArgs;
use isthmus_analyze::{
    analyze, exceeds_threshold, filter_output, load_for_analysis, AnalyzeOptions, Level,
    OutputFormat,
};
use std::path::PathBuf;
use std::process::ExitCode;

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
    if paths.is_empty() {
        anyhow::bail!("nothing to analyze: give files or directories (isthmus analyze DIR)");
    }
    // istioctl analyzes objects even when the webhook would refuse them (and reports that as
    // IST0106 etc.), so use the analysis loader rather than the admission loader.
    let input = load_for_analysis(&paths, None)?;
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
        namespace: args.namespace.clone(),
        isthmus_analyzers: !args.istio_only,
        sources: input.sources.clone(),
        domain_suffix: args.mesh.domain.clone(),
        request_authentications: input.request_authentications.clone(),
        ..AnalyzeOptions::default()
    };
    let msgs = analyze(&input.objects, &mesh, &opts);
    print!("{}", format.render(&filter_output(&msgs, output_level)));
    let failed = exceeds_threshold(&msgs, failure);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
