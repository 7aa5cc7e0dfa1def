//! `isthmus validate -f PATH...`: every problem, located; kubectl's and istiod's exact texts.

use crate::InputArgs;
use isthmus_api::{load_paths, LoadOptions, Severity};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output format: text (kubectl's messages plus file:line:column) or json.
    #[arg(short = 'o', long = "output", default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = LoadOptions {
        default_namespace: args.input.namespace.clone(),
        ..LoadOptions::default()
    };
    let loaded = load_paths(&args.input.files, &opts)?;
    let invalid = loaded.has_errors();
    if args.output == "json" {
        let doc = serde_json::json!({
            "valid": !invalid,
            "objects": loaded.objects.iter().map(|o| serde_json::json!({
                "kind": o.kind.as_str(),
                "namespace": o.meta.namespace,
                "name": o.name(),
                "file": o.source.file,
                "line": o.source.line,
            })).collect::<Vec<_>>(),
            "rejections": loaded.rejections,
            "diagnostics": loaded.diagnostics,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for o in &loaded.objects {
            println!(
                "{} {}: valid ({}:{})",
                o.kind,
                qualified(o.meta.namespace.as_deref(), o.name()),
                o.source.file,
                o.source.line
            );
        }
        for r in &loaded.rejections {
            eprintln!("{}", r.message);
        }
        for d in &loaded.diagnostics {
            if d.severity == Severity::Info {
                eprintln!("note: {d}");
            } else {
                eprintln!("{d}");
            }
        }
        let errors = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        let warnings = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count();
        eprintln!(
            "{} valid, {} rejected, {} error(s), {} warning(s)",
            loaded.objects.len(),
            loaded.rejections.len(),
            errors,
            warnings
        );
    }
    Ok(if invalid {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn qualified(ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}
