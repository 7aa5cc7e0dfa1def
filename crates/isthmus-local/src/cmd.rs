//! Running the `ip`, `nft` and util-linux tools.
//!
//! The runtime drives the kernel through the same commands an operator would type, so every
//! step can be reproduced by hand when debugging (`ip netns`, `ip -n NS link`, `nft list
//! ruleset`). Failures carry the full command line and the tool's stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Failure of an external tool.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The tool is not installed.
    #[error("`{tool}` not found in PATH; install it (Debian: `apt-get install -y {package}`)")]
    NotFound {
        /// Tool name.
        tool: String,
        /// Debian package providing it.
        package: String,
    },
    /// The tool could not be started.
    #[error("could not run `{cmdline}`: {source}")]
    Spawn {
        /// The command line.
        cmdline: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("`{cmdline}` failed ({status}): {stderr}{hint}")]
    Failed {
        /// The command line.
        cmdline: String,
        /// Exit status text.
        status: String,
        /// Trimmed stderr of the tool.
        stderr: String,
        /// Operator hint (may be empty).
        hint: String,
    },
}

/// Locates a tool in the usual system directories (independent of the caller's PATH, which
/// may be cleared for pod processes).
pub fn which(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Like [`which`] but returns an error naming the Debian package to install.
pub fn require(tool: &str) -> Result<PathBuf, CmdError> {
    which(tool).ok_or_else(|| CmdError::NotFound {
        tool: tool.to_string(),
        package: match tool {
            "ip" => "iproute2",
            "nft" => "nftables",
            "nsenter" | "unshare" | "mount" => "util-linux",
            other => other,
        }
        .to_string(),
    })
}

fn cmdline(tool: &str, args: &[&str]) -> String {
    let mut s = tool.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn hint_for(stderr: &str) -> String {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("operation not permitted") || lower.contains("permission denied") {
        " (hint: the local runtime needs root / CAP_NET_ADMIN + CAP_SYS_ADMIN)".to_string()
    } else if lower.contains("protocol not supported")
        || lower.contains("no such file or directory") && lower.contains("nft")
    {
        " (hint: the kernel lacks nf_tables support; load the nf_tables module)".to_string()
    } else {
        String::new()
    }
}

/// Runs `tool args...`, optionally feeding `stdin`, and returns stdout.
pub fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, CmdError> {
    let path = require(tool)?;
    let line = cmdline(tool, args);
    tracing::debug!(cmd = %line, "exec");
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            cmdline: line.clone(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| CmdError::Spawn {
                cmdline: line.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| CmdError::Spawn {
        cmdline: line.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stderr = if let Some(input) = stdin {
            format!("{stderr}\n--- input ---\n{input}")
        } else {
            stderr
        };
        Err(CmdError::Failed {
            cmdline: line,
            status: out.status.to_string(),
            hint: hint_for(&stderr),
            stderr,
        })
    }
}

/// Runs `ip args...`.
pub fn ip(args: &[&str]) -> Result<String, CmdError> {
    run("ip", args, None)
}

/// Runs `nft -f -` inside network namespace `netns` (or the caller's namespace when `None`)
/// with `script` on stdin, so a whole rule set is applied as one atomic transaction.
pub fn nft_script(netns: Option<&str>, script: &str) -> Result<String, CmdError> {
    match netns {
        Some(ns) => run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)),
        None => run("nft", &["-f", "-"], Some(script)),
    }
}

/// Runs `nft args...` inside network namespace `netns` (or the caller's namespace).
pub fn nft(netns: Option<&str>, args: &[&str]) -> Result<String, CmdError> {
    match netns {
        Some(ns) => {
            let mut full = vec!["netns", "exec", ns, "nft"];
            full.extend_from_slice(args);
            run("ip", &full, None)
        }
        None => run("nft", args, None),
    }
}
