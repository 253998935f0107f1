//! A terminal server: tmux (its own socket under the work directory, no
//! configuration) with a shell in a pane. The shell sets a variable and
//! prints a marker; the tmux server's tree (the server, the pane's shell
//! in a session of its own with the pane's pty as controlling terminal) is
//! dumped, killed and restored (-d); then, through tmux's own unix socket,
//! the pane still shows the marker, the shell still has its variable, and
//! a new window (a new pty, a new shell) can be made, and a client
//! attached on a terminal of its own (script(1)) sees the pane. Skipped, saying so,
//! only without a `tmux` in PATH (.ci/run installs it).

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `program` with a clean environment (PATH, HOME the work directory,
/// TERM, `SHELL` from the work directory's `shell` file or /bin/sh), stdin
/// from /dev/null, in a session of its own, without our descriptors: a
/// server it starts must not inherit our terminal or descriptors.
fn clean_command(work: &Work, program: &str) -> Command {
    let shell = std::fs::read_to_string(work.path("shell")).unwrap_or_else(|_| "/bin/sh".into());
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", work.dir())
        .env("SHELL", shell.trim())
        .env("TERM", "xterm")
        .current_dir(work.dir())
        .stdin(Stdio::null());
    // SAFETY: close_range and setsid are async-signal-safe and touch only
    // the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::setsid();
            Ok(())
        });
    }
    cmd
}

/// Runs `tmux -S SOCK -f /dev/null ARGS...` ([`clean_command`]); its
/// stdout.
fn tmux(work: &Work, args: &[&str]) -> Result<String, String> {
    let mut cmd = clean_command(work, "tmux");
    cmd.arg("-S")
        .arg(work.path("tmux.sock"))
        .arg("-f")
        .arg("/dev/null")
        .args(args);
    let out = cmd.output().map_err(|e| format!("tmux {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tmux {args:?}: {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `target`'s pane shows a line ending in `line` that is the
/// shell's answer, not the echoed command line (a prompt may stand before
/// it when the keys arrived before the first prompt); the pane's text.
fn wait_for_line(work: &Work, target: &str, line: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = tmux(work, &["capture-pane", "-p", "-t", target])?;
        if text
            .lines()
            .any(|l| l.trim_end().ends_with(line) && !l.contains("echo"))
        {
            return Ok(text);
        }
        if Instant::now() > deadline {
            return Err(format!("no line {line:?} in pane {target}:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tmux server with session `main` (its pane running `shell`), adopted
/// as our child; None (the test skipped, saying so) without tmux. The
/// guard serializes the tests: each server's ptys come back with their
/// indices.
fn start_server(
    name: &str,
    shell: &str,
) -> Option<(Work, Proc, std::sync::MutexGuard<'static, ()>)> {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIP {name}: no tmux in PATH");
        return None;
    }
    ensure_subreaper();
    let guard = pty_lock();
    let w = Work::new(name);
    std::fs::write(w.path("shell"), shell).expect("write shell");
    let size = ["-x", "80", "-y", "24"];
    let new = [&["new-session", "-d", "-s", "main"][..], &size[..]].concat();
    step(&w, "start tmux", tmux(&w, &new));
    let pid: i32 = step(&w, "server pid", tmux(&w, &["display", "-p", "#{pid}"]))
        .trim()
        .parse()
        .unwrap_or_else(|e| fail(&w, format!("server pid: {e}")));
    // The server detached from its client (daemon): as subreaper we are
    // its parent now.
    let server = Proc::adopt(pid);
    Some((w, server, guard))
}

/// dash: it holds /dev/tty open (fd 10) for job control.
/// Types `line` and Enter into pane `target`.
fn type_line(work: &Work, target: &str, line: &str) {
    step(
        work,
        &format!("send-keys {line:?} to {target}"),
        tmux(work, &["send-keys", "-t", target, line, "Enter"]),
    );
}

/// `script -qfc "tmux -S SOCK attach" WORK/typescript`, once tmux lists
/// the client.
fn attach(work: &Work) -> Result<std::process::Child, String> {
    let sock = work.path("tmux.sock");
    let cmd = format!("tmux -S {} -f /dev/null attach -t main", sock.display());
    let mut c = clean_command(work, "script");
    // script's input stays open while the client lives: at end of input
    // script would type ^D into the pane, whose shell would exit and take
    // the server with it.
    c.args(["-qfc", &cmd])
        .arg(work.path("typescript"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().map_err(|e| format!("script: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while tmux(work, &["list-clients"])?.trim().is_empty() {
        if Instant::now() > deadline {
            return Err("no client attached".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Waits until `WORK/name` contains `text`.
fn wait_in_file(work: &Work, name: &str, text: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = std::fs::read(work.path(name)).unwrap_or_default();
        if String::from_utf8_lossy(&b).contains(text) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no {text:?} in {name}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cr_tmux_server() {
    cr_tmux("cr_tmux", "/bin/sh");
}

/// bash: it keeps a duplicate of the terminal at fd 255.
#[test]
fn cr_tmux_server_bash() {
    cr_tmux("cr_tmux_bash", "/bin/bash");
}

fn cr_tmux(name: &str, shell: &str) {
    let Some((work, mut server, _pty)) = start_server(name, shell) else {
        return;
    };
    let w = &work;
    let pid = server.pid;
    let cmd = "X=stasis-$((6*7)); echo MARK-$X";
    type_line(w, "main:0", cmd);
    step(w, "marker", wait_for_line(w, "main:0", "MARK-stasis-42"));
    // tmux asks the pane's master for its foreground group
    // (tcgetpgrp) to name the running command and find its directory.
    let fmt = "#{pane_pid} #{pane_current_command} #{pane_current_path} #{pane_tty}";
    let pane = |w: &Work| tmux(w, &["display", "-p", "-t", "main:0", fmt]);
    let before = step(w, "pane before", pane(w));
    let opts = Opts::default();
    dump_and_check_gone(w, &mut server, &opts);
    server = restore_and_adopt(w, pid, &opts);
    assert_eq!(
        before,
        step(w, "pane after", pane(w)),
        "pane pid, command, path, tty"
    );

    let text = step(
        w,
        "marker after restore",
        wait_for_line(w, "main:0", "MARK-stasis-42"),
    );
    assert!(text.contains(cmd), "the command line is gone:\n{text}");
    type_line(w, "main:0", "echo AGAIN-$X");
    step(
        w,
        "the shell's variable",
        wait_for_line(w, "main:0", "AGAIN-stasis-42"),
    );
    // A new window: a new pty pair and a fresh shell, which has no X (the
    // control: the value above came from the restored shell).
    step(w, "new-window", tmux(w, &["new-window", "-t", "main"]));
    type_line(w, "main:1", "echo NEW-$X-$((1+1))");
    step(w, "a fresh shell", wait_for_line(w, "main:1", "NEW--2"));
    let windows = step(w, "list-windows", tmux(w, &["list-windows", "-t", "main"]));
    assert_eq!(windows.lines().count(), 2, "windows:\n{windows}");
    // A client attaches through the socket, on a terminal of its own
    // (script(1) makes one), and sees the restored shell's answer.
    let mut client = step(w, "attach", attach(w));
    step(
        w,
        "select-window",
        tmux(w, &["select-window", "-t", "main:0"]),
    );
    type_line(w, "main:0", "echo SEEN-$X");
    step(
        w,
        "the client's terminal",
        wait_in_file(w, "typescript", "SEEN-stasis-42"),
    );
    step(w, "kill-server", tmux(w, &["kill-server"]));
    let _ = client.wait();
    let e = step(w, "server exit", server.wait(Duration::from_secs(10)));
    assert!(matches!(e, Exit::Code(_) | Exit::Signal(_)), "{e:?}");
}

/// A client attached at dump time holds the other end of a unix socket
/// (and its terminal's descriptor is passed to the server): refused by
/// name, and the server runs on.
#[test]
fn refuse_tmux_with_attached_client() {
    let Some((work, mut server, _pty)) = start_server("refuse_tmux_attached", "/bin/sh") else {
        return;
    };
    let w = &work;
    let pid = server.pid;
    let mut client = step(w, "attach", attach(w));
    let out = dump(w, pid, &[], Duration::from_secs(60));
    assert!(
        !out.success() && out.stderr.contains("outside the dumped tree"),
        "dump with an attached client: {out:?}"
    );
    step(w, "the server runs on", tmux(w, &["list-windows"]));
    step(w, "kill-server", tmux(w, &["kill-server"]));
    let _ = client.wait();
    let _ = server.wait(Duration::from_secs(10));
}
