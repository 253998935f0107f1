//! Running a system tool (`nft`, `iptables`, `ip`) to the end, its first
//! error line kept. A tool started from a thread that joined a namespace
//! runs in that namespace (a child inherits its creator's namespaces).

use crate::{Result, SysError};
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `cmd args` with `stdin` fed in; its standard output.
pub fn output(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let what = format!("{cmd} {}", args.join(" "));
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| SysError::other(what.clone(), None, e.to_string()))?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes())
            .map_err(|e| SysError::other(what.clone(), None, e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SysError::other(what.clone(), None, e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(SysError::other(
            what,
            None,
            err.lines().next().unwrap_or("failed").to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd args` with `stdin` fed in, its output dropped.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    output(cmd, args, stdin).map(|_| ())
}
