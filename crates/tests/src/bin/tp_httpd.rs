//! tp_httpd: a real server survives checkpoint/restore. The program starts
//! `python3 -m http.server` (its child, so in the dumped tree) on an
//! ephemeral port serving a directory with one file, fetches the file with
//! `curl` before the dump and again after restore (same port, same body),
//! then stops the server and waits for it.
//!
//! Usage: `tp_httpd WORKDIR [--corrupt]`

use stasis_tests::{Proto, Report};
use std::io::BufRead;
use std::process::{Command, Stdio};

fn fetch(port: u16) -> Result<String, String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            &format!("http://127.0.0.1:{port}/hello.txt"),
        ])
        .output()
        .map_err(|e| format!("run curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() {
    let (proto, args) = Proto::from_args();
    let www = proto.path("www");
    std::fs::create_dir_all(&www)
        .unwrap_or_else(|e| stasis_tests::fatal(&format!("mkdir www: {e}")));
    let body = format!("served by pid {}\n", std::process::id());
    std::fs::write(www.join("hello.txt"), &body)
        .unwrap_or_else(|e| stasis_tests::fatal(&format!("write hello.txt: {e}")));
    // The real interpreter, not a shim that would fork.
    let py = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| stasis_tests::fatal(&format!("python3: {e}")));
    let log = std::fs::File::create(proto.path("httpd.log"))
        .unwrap_or_else(|e| stasis_tests::fatal(&format!("httpd.log: {e}")));
    let mut child = Command::new(py)
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&www)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| stasis_tests::fatal(&format!("start http.server: {e}")));
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    let port: u16 = first
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let _ = child.kill();
            stasis_tests::fatal(&format!("no port in {first:?}"))
        });
    let mut report = Report::new();
    report.eq("body before the dump", Ok(body.clone()), fetch(port));
    proto.ready_and_wait();
    let want = if args.corrupt() {
        format!("{body}!")
    } else {
        body
    };
    report.eq("body after restore", Ok(want), fetch(port));
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
    proto.finish(&report);
}
