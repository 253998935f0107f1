//! criu's command line: every criu option parses (table-driven, from the
//! binary's own option table), refused options and commands are refused by
//! name before anything is done, `--version` has criu's format, `check
//! --feature` answers criu's names, stasis answers as `criu` through a
//! symlink, and a real dump/restore runs with criu-style arguments.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `bin ARGS` in `cwd`, capturing its output through files.
fn run_in(work: &Work, cwd: &Path, bin: &Path, args: &[String]) -> CmdOut {
    let out_p = work.path("cli.stdout");
    let err_p = work.path("cli.stderr");
    let st = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_p).expect("stdout file"))
        .stderr(fs::File::create(&err_p).expect("stderr file"))
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    CmdOut {
        code: st.code(),
        stdout: fs::read_to_string(&out_p).unwrap_or_default(),
        stderr: fs::read_to_string(&err_p).unwrap_or_default(),
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// One row of `stasis criu-options`.
#[derive(Debug)]
struct Row {
    long: String,
    short: Option<char>,
    arg: String,
    negatable: bool,
    scope: u8,
    fate: String,
    example: String,
}

fn table(work: &Work) -> Vec<Row> {
    let out = stasis(work, &["criu-options"], Duration::from_secs(30));
    assert!(out.success(), "criu-options: {}", out.stderr);
    let rows: Vec<Row> = out
        .stdout
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            assert_eq!(c.len(), 7, "bad row {l:?}");
            Row {
                long: c[0].into(),
                short: c[1].chars().next(),
                arg: c[2].into(),
                negatable: c[3] == "true",
                scope: c[4].parse().expect("scope"),
                fate: c[5].into(),
                example: c[6].into(),
            }
        })
        .collect();
    // criu 4.1's options that callers pass most; the table must have them all.
    for must in [
        "tree",
        "images-dir",
        "log-file",
        "verbosity",
        "pidfile",
        "shell-job",
        "file-locks",
        "manage-cgroups",
        "link-remap",
        "ghost-limit",
        "external",
        "network-lock",
        "tcp-close",
        "tcp-established",
        "ext-unix-sk",
        "leave-running",
        "restore-detached",
        "restore-sibling",
        "inherit-fd",
        "lazy-pages",
        "page-server",
        "work-dir",
        "pre-dump-mode",
        "no-default-config",
        "skip-in-flight",
        "evasive-devices",
        "empty-ns",
        "cgroup-root",
        "ext-mount-map",
        "action-script",
        "display-stats",
        "log-pid",
        "timeout",
        "feature",
        "all",
    ] {
        assert!(
            rows.iter().any(|r| r.long == must),
            "option --{must} missing"
        );
    }
    assert!(rows.len() >= 85, "only {} options", rows.len());
    rows
}

const DUMP: u8 = 1;
const RESTORE: u8 = 4;

/// The spellings of one option to try: long, short, and `--no-` forms,
/// each with its expected refusal.
fn spellings(r: &Row) -> Vec<(Vec<String>, bool)> {
    let mut v = Vec::new();
    let long = match r.arg.as_str() {
        "required" => vec![format!("--{}", r.long), r.example.clone()],
        "optional" if !r.example.is_empty() => vec![format!("--{}={}", r.long, r.example)],
        _ => vec![format!("--{}", r.long)],
    };
    v.push((long, false));
    if let Some(c) = r.short {
        let short = match r.arg.as_str() {
            "required" => vec![format!("-{c}"), r.example.clone()],
            "optional" if !r.example.is_empty() => vec![format!("-{c}{}", r.example)],
            _ => vec![format!("-{c}")],
        };
        v.push((short, false));
    }
    if r.negatable {
        v.push((vec![format!("--no-{}", r.long)], true));
    }
    v
}

fn check_command(cmd: &str, bit: u8, base: &[&str], reached: &str) {
    let work = Work::new(&format!("cli_every_option_{cmd}"));
    let rows = table(&work);
    let mut checked = 0;
    for r in &rows {
        for (spelled, negated) in spellings(r) {
            let img = work.path(&format!("img-{checked}"));
            let mut args = strings(&[cmd]);
            args.extend(strings(base));
            args.extend(strings(&[
                "-D",
                img.to_str().expect("utf-8"),
                "-o",
                "x.log",
            ]));
            args.extend(spelled.iter().cloned());
            let out = run_in(&work, work.dir(), &stasis_bin(), &args);
            let refused = !negated && r.fate == "refused" && r.scope & bit != 0;
            let line = format!("stasis: error: option --{} ", r.long);
            if refused {
                assert!(
                    out.code.is_some_and(|c| c != 0)
                        && out.stderr.starts_with(&line)
                        && out.stderr.contains("is not supported yet")
                        && out.stderr.lines().count() == 1,
                    "{args:?}: expected one line refusing --{}, got {:?} {:?}",
                    r.long,
                    out.code,
                    out.stderr
                );
                assert!(
                    !img.exists(),
                    "{args:?}: refused, yet the image directory was created"
                );
            } else if matches!(r.long.as_str(), "version" | "help") && !negated {
                assert!(out.success(), "{args:?}: {:?} {}", out.code, out.stderr);
                assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
            } else {
                // Parsed and accepted: stasis went on to the dump/restore
                // itself, which fails on the missing process/image.
                assert_reached(&args, &out, reached);
            }
            checked += 1;
        }
    }
    eprintln!("{cmd}: {checked} spellings checked");
}

/// The options were accepted: stasis went on to the command itself, which
/// failed on the missing process or image (`reached` names it).
fn assert_reached(args: &[String], out: &CmdOut, reached: &str) {
    assert!(
        out.code.is_some_and(|c| c != 0)
            && out.stderr.contains(reached)
            && !out.stderr.contains("not supported yet"),
        "{args:?}: expected to reach {reached:?}, got {:?} {:?}",
        out.code,
        out.stderr
    );
}

#[test]
fn every_criu_option_of_dump() {
    // A PID above any pid_max: the dump itself must fail once it starts.
    check_command(
        "dump",
        DUMP,
        &["-t", "99999999", "--no-default-config"],
        "dump pid 9999999",
    );
}

#[test]
fn every_criu_option_of_restore() {
    check_command("restore", RESTORE, &["--no-default-config"], "restore");
}

#[test]
fn option_syntax_errors() {
    let work = Work::new("cli_syntax");
    for (args, want) in [
        (&["dump", "--nosuch"][..], "unrecognized option --nosuch"),
        (&["restore", "--pidfile"][..], "requires an argument"),
        (&["dump", "--tls-c", "x"][..], "ambiguous"),
        (
            &["dump", "-t", "1", "--leave-running=yes"][..],
            "doesn't allow",
        ),
        (&["dump", "-t", "0"][..], "invalid argument for --tree"),
        (
            &["dump", "-t", "5", "--manage-cgroups=bogus"][..],
            "invalid argument",
        ),
        (
            &["dump", "-t", "5", "--network-lock", "bogus"][..],
            "invalid argument",
        ),
        (
            &["dump", "-t", "5", "--ghost-limit", "1X"][..],
            "invalid argument",
        ),
        (
            &["restore", "--external", "macvlan[mv0:eth0"][..],
            "invalid argument for --external",
        ),
        (
            &["dump", "-t", "5", "--ghost-limit=2000G"][..],
            "above the largest",
        ),
        (&["frobnicate"][..], "unknown command"),
        (&[][..], "no command given"),
    ] {
        let out = run_in(&work, work.dir(), &stasis_bin(), &strings(args));
        assert!(
            out.code == Some(1) && out.stderr.contains(want) && out.stderr.lines().count() == 1,
            "{args:?}: want one line with {want:?}, got {:?} {:?}",
            out.code,
            out.stderr
        );
    }
    // getopt forms: options before the command, clusters, prefixes, -vN.
    let out = run_in(
        &work,
        work.dir(),
        &stasis_bin(),
        &strings(&[
            "-v4",
            "--images-dir=img",
            "dump",
            "-Rj",
            "--tcp-est",
            "-t99999999",
        ]),
    );
    assert!(
        out.stderr.contains("dump pid 99999999"),
        "got {:?} {:?}",
        out.code,
        out.stderr
    );
}

/// criu's `--external` kinds: applied (mnt[MOUNTPOINT]:KEY, mnt[KEY]:PATH,
/// unix[INO], file[MNT_ID:INODE], dev, veth, macvlan), accepted (mnt[]), refused by
/// name in one line (tty, mnt[]:s/m), invalid ones an error.
#[test]
fn external_resources_judged_by_kind() {
    let work = Work::new("cli_external");
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("dump", "mnt[/srv]:srv", None),
        ("restore", "mnt[srv]:/tmp", None),
        ("dump", "mnt[]", None),
        ("dump", "mnt[]:", None),
        ("dump", "unix[12345]", None),
        ("dump", "--ext-unix-sk=12345,678", None),
        (
            "dump",
            "--ext-unix-sk=12x",
            Some("invalid argument for --ext-unix-sk"),
        ),
        ("restore", "veth[eth0]:veth9", None),
        ("dump", "mnt[]:sm", Some("sharing (s) and masters (m)")),
        ("dump", "dev[8/1]:disk", None),
        ("restore", "dev[disk]:/dev/sda1", None),
        (
            "dump",
            "dev[disk]:x",
            Some("invalid argument for --external"),
        ),
        ("dump", "dev[8/1]", Some("invalid argument for --external")),
        ("dump", "file[1a:2b]", None),
        ("dump", "file[1a]", Some("invalid argument for --external")),
        ("restore", "macvlan[eth1]:mv0", None),
        ("dump", "tty[8801:3]", Some("external tty")),
        ("dump", "unix[x]", Some("invalid argument for --external")),
        ("dump", "bogus[1]", Some("invalid argument for --external")),
        ("dump", "mnt[]:q", Some("invalid argument for --external")),
    ];
    for (i, (cmd, ext, want)) in cases.iter().enumerate() {
        let img = work.path(&format!("img-{i}"));
        let mut args = strings(&[cmd, "--no-default-config", "-D"]);
        args.extend(strings(&[img.to_str().expect("utf-8"), "-o", "x.log"]));
        if *cmd == "dump" {
            args.extend(strings(&["-t", "99999999"]));
        }
        // An option of its own (`--ext-unix-sk=LIST`), or an --external value.
        let own = ext.starts_with("--");
        if own {
            args.push(ext.to_string());
        } else {
            args.extend(strings(&["--external", ext]));
        }
        let out = run_in(&work, work.dir(), &stasis_bin(), &args);
        match want {
            Some(w) => assert!(
                out.code == Some(1)
                    && out.stderr.contains(w)
                    && (own || out.stderr.contains(ext))
                    && out.stderr.lines().count() == 1
                    && !img.exists(),
                "{args:?}: want one line with {w:?}, got {:?} {:?}",
                out.code,
                out.stderr
            ),
            None => {
                let reached = if *cmd == "dump" {
                    "dump pid 99999999"
                } else {
                    "restore"
                };
                assert_reached(&args, &out, reached);
            }
        }
    }
}

#[test]
fn unimplemented_commands_refused_by_name() {
    let work = Work::new("cli_commands");
    let cmd = "exec";
    let img = work.path(cmd);
    let args = strings(&[
        cmd,
        "-D",
        img.to_str().expect("utf-8"),
        "-o",
        "x.log",
        "--port",
        "1234",
        "-t",
        "1",
    ]);
    let out = run_in(&work, work.dir(), &stasis_bin(), &args);
    assert!(
        out.code == Some(1)
            && out.stderr == format!("stasis: error: command {cmd} is not supported yet\n"),
        "{cmd}: got {:?} {:?}",
        out.code,
        out.stderr
    );
    assert!(!img.exists(), "{cmd}: the directory was created");
    // `dedup` of a directory that is not an image: refused, not created.
    let img = work.path("dedup");
    let out = run_in(
        &work,
        work.dir(),
        &stasis_bin(),
        &strings(&["dedup", "-D", img.to_str().expect("utf-8"), "-o", "x.log"]),
    );
    assert!(
        out.code == Some(1)
            && out.stderr.contains("dedup")
            && out.stderr.contains("nothing was changed"),
        "dedup: got {:?} {:?}",
        out.code,
        out.stderr
    );
    assert!(!img.exists(), "dedup: the directory was created");
}

/// criu's `cpuinfo dump` then `cpuinfo check` on the same CPU: it
/// matches. Negative controls, each on an edited copy of the image: an
/// XSAVE component this CPU lacks fails `fpu` (the default), a flag it
/// lacks fails `ins` (the default), another model fails only `cpu`;
/// `--cpu-cap none` checks nothing; a missing image and a bad argument
/// are refused.
#[test]
fn cpuinfo_dump_check() {
    let work = Work::new("cli_cpuinfo");
    let dir = work.path("cpu");
    let d = dir.to_str().expect("utf-8");
    let run = |args: &[&str]| run_in(&work, work.dir(), &stasis_bin(), &strings(args));
    let out = run(&["cpuinfo", "dump", "-D", d]);
    assert!(out.success(), "cpuinfo dump: {out:?}");
    let img = dir.join("cpuinfo.img");
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&img).expect("cpuinfo.img")).expect("JSON");
    assert!(
        saved["xfeatures"].as_u64().unwrap_or(0) & 0b11 == 0b11,
        "{saved}"
    );
    for caps in [None, Some("all"), Some("cpu"), Some("fpu,ins")] {
        // (An optional argument: criu's getopt takes it after `=` only.)
        let cap = caps.map(|c| format!("--cpu-cap={c}"));
        let mut a = vec!["cpuinfo", "check", "-D", d];
        a.extend(cap.as_deref());
        let out = run(&a);
        assert!(
            out.success(),
            "cpuinfo check {caps:?} on the same CPU: {out:?}"
        );
    }
    let edited = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = saved.clone();
        f(&mut v);
        fs::write(&img, v.to_string()).expect("write");
    };
    let fails = |caps: &str, word: &str| {
        let out = run(&["cpuinfo", "check", "-D", d, &format!("--cpu-cap={caps}")]);
        assert!(
            out.code == Some(1) && out.stderr.contains(word),
            "cpuinfo check --cpu-cap {caps}: {out:?}"
        );
    };
    edited(&|v| v["xfeatures"] = (v["xfeatures"].as_u64().unwrap() | 1 << 62).into());
    fails("default", "62 (unknown)");
    fails("fpu", "XSAVE component");
    assert!(run(&["cpuinfo", "check", "-D", d, "--cpu-cap=ins"]).success());
    edited(&|v| {
        v["flags"]
            .as_array_mut()
            .unwrap()
            .push("stasis_no_such_flag".into())
    });
    fails("default", "stasis_no_such_flag");
    assert!(run(&["cpuinfo", "check", "-D", d, "--cpu-cap=fpu"]).success());
    edited(&|v| v["model"] = "99999".into());
    fails("cpu", "model");
    assert!(run(&["cpuinfo", "check", "-D", d]).success());
    assert!(run(&["cpuinfo", "check", "-D", d, "--cpu-cap=none"]).success());
    fs::remove_file(&img).expect("remove");
    fails("default", "cpuinfo.img");
    let out = run(&["cpuinfo", "-D", d]);
    assert!(
        out.code == Some(1) && out.stderr.contains("dump or check"),
        "{out:?}"
    );
}

fn check_version(out: &CmdOut, what: &str) {
    assert!(out.success(), "{what}: {:?} {}", out.code, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{what}: {:?}", out.stdout);
    let v = lines[0]
        .strip_prefix("Version: ")
        .unwrap_or_else(|| panic!("{what}: {:?}", out.stdout));
    let parts: Vec<&str> = v.split('.').collect();
    assert!(
        (2..=3).contains(&parts.len()) && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "{what}: version {v:?} is not criu's X.Y[.Z]"
    );
    assert!(lines[1].starts_with("GitID: "), "{what}: {:?}", out.stdout);
}

#[test]
fn version_has_criu_format() {
    let work = Work::new("cli_version");
    for a in [&["--version"][..], &["-V"], &["dump", "-V"]] {
        let out = run_in(&work, work.dir(), &stasis_bin(), &strings(a));
        check_version(&out, &format!("{a:?}"));
    }
}

#[test]
fn check_feature_answers_criu_names() {
    let work = Work::new("cli_check");
    let run = |a: &[&str]| run_in(&work, work.dir(), &stasis_bin(), &strings(a));
    // stasis cannot work without these; the kernel here has them.
    for yes in [
        "clone3_set_tid",
        "ns_pid",
        "mnt_id",
        "get_rseq_conf",
        "uffd",
        "uffd-noncoop",
        "tun",
        "userns",
        "timens",
        "cgroupns",
        "seccomp_filters",
        "tcp_half_closed",
        "sk_unix_file",
        "nftables",
        "has_ipt_legacy",
        "external_net_ns",
    ] {
        let out = run(&["check", "--feature", yes]);
        assert!(
            out.success() && out.stdout == format!("{yes} is supported\n"),
            "{yes}: {:?} {:?} {:?}",
            out.code,
            out.stdout,
            out.stderr
        );
    }
    // Things stasis does not do, whatever the kernel offers.
    for no in [
        "autofs",
        "aio_remap",
        "compat_cr",
        "pidfd_store",
        "memfd_hugetlb",
    ] {
        let out = run(&["check", "--feature", no]);
        assert_eq!(out.code, Some(1), "{no}: {:?} {:?}", out.stdout, out.stderr);
        assert!(out.stderr.contains(no), "{no}: {:?}", out.stderr);
    }
    let out = run(&["check", "--feature", "no_such_feature"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
    let out = run(&["check", "--feature", "list"]);
    assert!(out.success() && out.stdout.contains("uffd-noncoop"));
    // --all answers every criu feature; some are not supported: exit 1 as criu.
    let out = run(&["check", "--all"]);
    assert_eq!(out.code, Some(1), "{:?}", out.stderr);
    assert!(out
        .stdout
        .contains("Looks good but some kernel features are missing"));
    for name in [
        "timerfd",
        "fdinfo_lock",
        "clone3_set_tid",
        "autofs",
        "compat_cr",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(name)),
            "check --all lists no {name}"
        );
    }
    let out = run(&["check"]);
    assert!(out.success() && out.stdout.ends_with("Looks good.\n"));
}

#[test]
fn invoked_as_criu() {
    let work = Work::new("cli_as_criu");
    let bin = work.path("bin");
    let out = stasis(
        &work,
        &["install-criu-link", bin.to_str().expect("utf-8")],
        Duration::from_secs(30),
    );
    assert!(!out.success(), "a missing directory must fail");
    fs::create_dir(&bin).expect("mkdir");
    for _ in 0..2 {
        // Twice: the second run finds its own link and succeeds.
        let out = stasis(
            &work,
            &["install-criu-link", bin.to_str().expect("utf-8")],
            Duration::from_secs(30),
        );
        assert!(out.success(), "{:?} {}", out.code, out.stderr);
    }
    let criu = bin.join("criu");
    assert_eq!(
        fs::read_link(&criu).expect("link"),
        fs::canonicalize(stasis_bin()).expect("canonical stasis")
    );
    let out = run_in(&work, work.dir(), &criu, &strings(&["--version"]));
    check_version(&out, "criu --version");
    let out = run_in(
        &work,
        work.dir(),
        &criu,
        &strings(&["check", "--feature", "clone3_set_tid"]),
    );
    assert!(out.success(), "{:?}", out.stderr);
    let out = run_in(&work, work.dir(), &criu, &strings(&["--help"]));
    assert!(
        out.success() && out.stdout.contains("criu dump"),
        "{:?}",
        out.stdout
    );
    // Something else already named criu is left alone.
    let other = work.path("bin2");
    fs::create_dir(&other).expect("mkdir");
    fs::write(other.join("criu"), "#!/bin/sh\n").expect("write");
    let out = stasis(
        &work,
        &["install-criu-link", other.to_str().expect("utf-8")],
        Duration::from_secs(30),
    );
    assert!(!out.success() && out.stderr.contains("remove it first"));
    assert_eq!(
        fs::read_to_string(other.join("criu")).unwrap(),
        "#!/bin/sh\n"
    );
}

/// A real dump and restore through `criu`, with the arguments a container
/// runtime passes (relative log and pid files land in the images directory,
/// as with criu).
#[test]
fn dump_restore_with_criu_arguments() {
    let work = Work::new("cli_criu_dump_restore");
    let bin = work.path("bin");
    fs::create_dir(&bin).expect("mkdir");
    let criu: PathBuf = bin.join("criu");
    std::os::unix::fs::symlink(stasis_bin(), &criu).expect("symlink");
    let opts = Opts::default();
    let mut p = start(&work, Program::Bin("tp_signals"), &[]);
    step(
        &work,
        "waiting for ready",
        wait_ready(&work, &mut p, opts.ready_timeout),
    );
    let img = work.img();
    let img_s = img.to_str().expect("utf-8").to_string();
    let pid = p.pid.to_string();
    let common = [
        "--file-locks",
        "--manage-cgroups=ignore",
        "--tcp-established",
        "--ext-unix-sk",
        "--link-remap",
        "--evasive-devices",
        "--no-default-config",
    ];
    let mut args = strings(&[
        "dump",
        "-t",
        &pid,
        "-D",
        &img_s,
        "-o",
        "dump.log",
        "-v4",
        "--ghost-limit",
        "1M",
        "--network-lock",
        "iptables",
        "--display-stats",
    ]);
    args.extend(strings(&common));
    let out = run_in(&work, work.dir(), &criu, &args);
    if !out.success() {
        fail(
            &work,
            format!("criu dump failed ({:?}): {}", out.code, out.stderr),
        );
    }
    let exit = step(
        &work,
        "dumped process dies",
        p.wait(Duration::from_secs(10)),
    );
    assert_eq!(exit, Exit::Signal(libc::SIGKILL));
    let log = fs::read_to_string(img.join("dump.log")).expect("dump.log in the images dir");
    assert!(
        log.contains("--link-remap: accepted"),
        "the log has no note for an accepted option"
    );
    let mut args = strings(&[
        "restore",
        "-D",
        &img_s,
        "-o",
        "restore.log",
        "-v4",
        "-d",
        "--pidfile",
        "restore.pid",
        "--tcp-close",
    ]);
    args.extend(strings(&common));
    let out = run_in(&work, work.dir(), &criu, &args);
    let mut r = Proc::adopt(p.pid);
    if !out.success() {
        fail(
            &work,
            format!("criu restore failed ({:?}): {}", out.code, out.stderr),
        );
    }
    let written = fs::read_to_string(img.join("restore.pid")).unwrap_or_default();
    assert_eq!(written.trim(), pid, "pidfile in the images directory");
    step(&work, "restored process state", r.check_running_untraced());
    finish(&work, &mut r, opts.finish_timeout).assert_pass(&work);
}

/// criu would read its default configuration files; stasis does not, so a
/// dump refuses to run while one exists, unless --no-default-config.
#[test]
fn criu_config_file_refused_unless_no_default_config() {
    let work = Work::new("cli_config");
    let conf = work.path("criu.conf");
    fs::write(&conf, "tcp-established\n").expect("write conf");
    let img = work.path("img");
    let run = |extra: &[&str]| {
        let mut args = strings(&["dump", "-t", "99999999", "-D"]);
        args.push(img.to_str().expect("utf-8").into());
        args.extend(strings(&["-o", "x.log"]));
        args.extend(strings(extra));
        let out_p = work.path("conf.stderr");
        let st = Command::new(stasis_bin())
            .args(&args)
            .current_dir(work.dir())
            .env("CRIU_CONFIG_FILE", &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&out_p).expect("stderr file"))
            .status()
            .expect("run stasis");
        (st.code(), fs::read_to_string(&out_p).unwrap_or_default())
    };
    let (code, err) = run(&[]);
    assert!(
        code == Some(1) && err.contains("is not read by stasis") && err.lines().count() == 1,
        "{code:?} {err:?}"
    );
    assert!(
        !img.exists(),
        "refused, yet the image directory was created"
    );
    let (code, err) = run(&["--no-default-config"]);
    assert!(
        code == Some(1) && err.contains("dump pid 99999999"),
        "{code:?} {err:?}"
    );
}

/// `swrk` needs a SOCK_SEQPACKET socket's descriptor: anything else is one
/// line of refusal (the RPC itself is tested in tests/rpc.rs).
#[test]
fn swrk_needs_a_seqpacket_socket() {
    let work = Work::new("cli_swrk");
    for (args, words) in [
        (vec!["swrk"], "swrk FD"),
        (vec!["swrk", "x"], "not a descriptor number"),
        (vec!["swrk", "0"], "not a SOCK_SEQPACKET socket"),
        (vec!["swrk", "77"], "fd 77"),
    ] {
        let out = run_in(&work, work.dir(), &stasis_bin(), &strings(&args));
        assert!(
            out.code == Some(1) && out.stderr.lines().count() == 1 && out.stderr.contains(words),
            "{args:?}: got {:?} {:?}",
            out.code,
            out.stderr
        );
    }
}
