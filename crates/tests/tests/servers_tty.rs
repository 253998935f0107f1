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

/// Runs `tmux -S SOCK ARGS...` with a clean environment (`SHELL` from
/// the work directory's `shell` file, /bin/sh without); its stdout.
fn tmux(work: &Work, args: &[&str]) -> Result<String, String> {
    let shell = std::fs::read_to_string(work.path("shell")).unwrap_or_else(|_| "/bin/sh".into());
    let sock = work.path("tmux.sock");
    let mut cmd = Command::new("tmux");
    cmd.arg("-S")
        .arg(&sock)
        .arg("-f")
        .arg("/dev/null")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", work.dir())
        .env("SHELL", shell.trim())
        .env("TERM", "xterm")
        .current_dir(work.dir())
        .stdin(Stdio::null());
    // SAFETY: close_range and setsid are async-signal-safe and touch only
    // the child: the server it starts must not inherit our descriptors or
    // our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::setsid();
            Ok(())
        });
    }
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

/// dash: it holds /dev/tty open (fd 10) for job control.
/// `script -qfc "tmux -S SOCK attach" WORK/typescript`, once tmux lists
/// the client.
fn attach(work: &Work) -> Result<std::process::Child, String> {
    let sock = work.path("tmux.sock");
    let cmd = format!("tmux -S {} -f /dev/null attach -t main", sock.display());
    let mut c = Command::new("script");
    c.args(["-qfc", &cmd])
        .arg(work.path("typescript"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", work.dir())
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: close_range and setsid are async-signal-safe and touch only
    // the child.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::setsid();
            Ok(())
        });
    }
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
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIP {name}: no tmux in PATH");
        return;
    }
    ensure_subreaper();
    // Each server's ptys come back with their indices: one at a time.
    let _pty = pty_lock();
    let work = Work::new(name);
    let w = &work;
    std::fs::write(w.path("shell"), shell).expect("write shell");
    step(
        w,
        "start tmux",
        tmux(
            w,
            &["new-session", "-d", "-s", "main", "-x", "80", "-y", "24"],
        ),
    );
    let pid: i32 = step(w, "server pid", tmux(w, &["display", "-p", "#{pid}"]))
        .trim()
        .parse()
        .unwrap_or_else(|e| fail(w, format!("server pid: {e}")));
    // The server detached from its client (daemon): as subreaper we are
    // its parent now.
    let mut server = Proc::adopt(pid);
    let cmd = "X=stasis-$((6*7)); echo MARK-$X";
    step(
        w,
        "send-keys",
        tmux(w, &["send-keys", "-t", "main:0", cmd, "Enter"]),
    );
    step(w, "marker", wait_for_line(w, "main:0", "MARK-stasis-42"));
    let opts = Opts::default();
    dump_and_check_gone(w, &mut server, &opts);
    let mut server = restore_and_adopt(w, pid, &opts);

    let text = step(
        w,
        "marker after restore",
        wait_for_line(w, "main:0", "MARK-stasis-42"),
    );
    assert!(text.contains(cmd), "the command line is gone:\n{text}");
    step(
        w,
        "send-keys after restore",
        tmux(w, &["send-keys", "-t", "main:0", "echo AGAIN-$X", "Enter"]),
    );
    step(
        w,
        "the shell's variable",
        wait_for_line(w, "main:0", "AGAIN-stasis-42"),
    );
    // A new window: a new pty pair and a fresh shell, which has no X (the
    // control: the value above came from the restored shell).
    step(w, "new-window", tmux(w, &["new-window", "-t", "main"]));
    step(
        w,
        "send-keys in the new window",
        tmux(
            w,
            &["send-keys", "-t", "main:1", "echo NEW-$X-$((1+1))", "Enter"],
        ),
    );
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
    step(
        w,
        "send-keys for the client",
        tmux(w, &["send-keys", "-t", "main:0", "echo SEEN-$X", "Enter"]),
    );
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
    let name = "refuse_tmux_attached";
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIP {name}: no tmux in PATH");
        return;
    }
    ensure_subreaper();
    let _pty = pty_lock();
    let work = Work::new(name);
    let w = &work;
    step(
        w,
        "start tmux",
        tmux(
            w,
            &["new-session", "-d", "-s", "main", "-x", "80", "-y", "24"],
        ),
    );
    let pid: i32 = step(w, "server pid", tmux(w, &["display", "-p", "#{pid}"]))
        .trim()
        .parse()
        .unwrap_or_else(|e| fail(w, format!("server pid: {e}")));
    let mut server = Proc::adopt(pid);
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
