//! Test-only helpers shared by the isthmus crates' integration tests.
//!
//! Why a crate: every corpus-based or environment-dependent test must behave the same way —
//! skip LOUDLY on a developer machine that lacks the prerequisite, and FAIL when `CI=true`,
//! because CI must never pass by skipping. Keeping that rule in one place keeps it consistent.

use std::path::{Path, PathBuf};

/// Environment variable that overrides where Istio's conformance corpora live.
pub const CORPORA_ENV: &str = "ISTHMUS_CORPORA";

/// Whether this run is CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Reports a missing prerequisite: panics under CI, otherwise prints a loud SKIPPED line.
///
/// Callers return early after this (it only returns outside CI).
pub fn skip_or_fail(what: &str) {
    let msg = format!("SKIPPED: {what}");
    if in_ci() {
        panic!("{msg} (CI=true: this test must run in CI; install what it needs in .ci/run)");
    }
    eprintln!("\n!!!!!!!!!! {msg} !!!!!!!!!!\n");
}

/// The corpora directory: `$ISTHMUS_CORPORA`, or `<workspace>/../shared/corpora` seen from a
/// crate at `crates/<name>` (pass `env!("CARGO_MANIFEST_DIR")`).
pub fn corpora_path(manifest_dir: &str) -> PathBuf {
    match std::env::var_os(CORPORA_ENV) {
        Some(d) => PathBuf::from(d),
        None => Path::new(manifest_dir).join("../../../shared/corpora"),
    }
}

/// The corpora directory if it holds `subdir` (e.g. `istio-validation`); otherwise reports the
/// skip (failing under CI) and returns `None`.
pub fn corpora_dir(manifest_dir: &str, subdir: &str) -> Option<PathBuf> {
    let dir = corpora_path(manifest_dir);
    if dir.join(subdir).is_dir() {
        Some(dir)
    } else {
        skip_or_fail(&format!(
            "corpora not found at {} (no {subdir}/; set {CORPORA_ENV})",
            dir.display()
        ));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_an_existing_subdir_and_misses_an_absent_one() {
        let tmp = std::env::temp_dir().join(format!("isthmus-testutil-{}", std::process::id()));
        let manifest = tmp.join("ws/crates/x");
        std::fs::create_dir_all(&manifest).unwrap();
        std::fs::create_dir_all(tmp.join("shared/corpora/istio-validation")).unwrap();
        if std::env::var_os(CORPORA_ENV).is_none() {
            let m = manifest.to_str().unwrap();
            assert_eq!(
                corpora_path(m),
                manifest.join("../../../shared/corpora"),
                "default is <workspace>/../shared/corpora"
            );
            assert!(corpora_dir(m, "istio-validation").is_some());
            if !in_ci() {
                assert!(corpora_dir(m, "no-such-corpus").is_none());
            }
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn skip_or_fail_panics_only_in_ci() {
        let r = std::panic::catch_unwind(|| skip_or_fail("probe"));
        assert_eq!(r.is_err(), in_ci());
    }
}
