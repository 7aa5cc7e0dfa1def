//! Helpers shared by the `isthmus` binary's e2e tests (each test file includes this module;
//! not every file uses every helper, hence the `dead_code` allowance).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_isthmus");

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Copies an example directory (recursively, sorted), pointing the manifests'
/// `command: ["isthmus", ...]` at the binary under test: the examples call `isthmus` by name,
/// as a user's PATH would after `cargo install`.
pub fn copy_example(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .expect("read example dir")
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let to = dst.join(e.file_name());
        if p.is_dir() {
            copy_example(&p, &to);
        } else if p.extension().and_then(|x| x.to_str()) == Some("yaml") {
            let text = std::fs::read_to_string(&p).expect("read yaml");
            std::fs::write(
                &to,
                text.replace("command: [\"isthmus\",", &format!("command: [\"{BIN}\",")),
            )
            .expect("write yaml");
        } else {
            std::fs::copy(&p, &to).expect("copy");
        }
    }
}

/// A command's exit code, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
