#![forbid(unsafe_code)]
//! `stasis`: checkpoint/restore for Linux processes.
//!
//! The command line is criu's (see `criu.rs` and README, "criu compatibility"):
//! every criu option parses and is applied, accepted with a note, or refused by name.

mod action;
mod bench;
mod bench_migrate;
mod cpuinfo;
mod criu;
mod criu_check;
mod criu_cmd;
mod freeze_cgroup;
mod logger;
mod migrate;
mod page_server;
mod rpc;
mod rpc_opts;
mod run_net;
mod stream;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "stasis",
    version,
    about = "Checkpoint/restore for Linux processes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// stasis's own commands; criu's commands (dump, restore, check, ...) are
/// parsed by `criu::parse` with criu's full option table.
#[derive(Subcommand)]
enum Cmd {
    /// Benchmark dump and restore against raw baselines (see README).
    Bench(bench::BenchArgs),
    /// Run a command as init (PID 1) of a new PID namespace with its own
    /// /proc: a tree that can be checkpointed and restored any number of
    /// times, and restored copies side by side, without PID clashes.
    Run {
        /// Return at once, leaving the command running.
        #[arg(short = 'd', long = "detach")]
        detach: bool,
        /// Write the command's PID (in our namespace) to FILE.
        #[arg(long = "pidfile", value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// Run it in a new network namespace too, lo up.
        #[arg(long = "net")]
        net: bool,
        /// With --net: a veth pair, `eth0` inside (up), OUTER in ours (up,
        /// a port of BRIDGE if given).
        #[arg(long = "veth", value_name = "OUTER[@BRIDGE]", requires = "net")]
        veth: Option<String>,
        /// With --veth: an address (CIDR) for eth0 inside; repeatable.
        #[arg(long = "net-addr", value_name = "ADDR/PREFIX", requires = "veth")]
        net_addr: Vec<String>,
        /// Also in a new user namespace mapping uids and gids 0..COUNT
        /// inside to OUTSIDE..OUTSIDE+COUNT (default 100000:65536, as
        /// rootless containers do); the command runs as root inside.
        #[arg(long = "user", value_name = "OUTSIDE:COUNT", num_args = 0..=1,
              require_equals = true, default_missing_value = "100000:65536")]
        user: Option<String>,
        /// Also in a new UTS namespace (host and domain name).
        #[arg(long = "uts")]
        uts: bool,
        /// Also in a new IPC namespace (SysV IPC, POSIX message queues).
        #[arg(long = "ipc")]
        ipc: bool,
        /// Also in a new cgroup namespace, rooted at our cgroup.
        #[arg(long = "cgroup")]
        cgroup: bool,
        /// Also in a new time namespace (zero offsets).
        #[arg(long = "time")]
        time: bool,
        /// The mount namespace's root: DIR is bound on itself, the new
        /// PID namespace's proc mounted on DIR/proc, and the command runs
        /// in it after pivot_root (criu's and runc's name for it).
        #[arg(long = "root", value_name = "DIR")]
        root: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Print an image directory or file as JSON.
    Show {
        /// Image directory or one image file.
        path: PathBuf,
    },
    /// Make `DIR/criu` (default /usr/local/sbin) a symbolic link to this
    /// binary: invoked as `criu`, stasis answers criu's command line.
    InstallCriuLink {
        /// Directory for the link.
        dir: Option<PathBuf>,
    },
    /// Print criu's option table as stasis handles it (tab-separated).
    #[command(hide = true)]
    CriuOptions,
}

/// Descriptors stasis itself holds (logged after a dump or restore, so
/// tests can see that repeated runs leak nothing).
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Bench(args) => {
            if let Some(f) = &args.log_file {
                logger::init(Some(f), Some(3))?;
            }
            bench::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            detach,
            pidfile,
            net,
            veth,
            net_addr,
            user,
            uts,
            ipc,
            cgroup,
            time,
            root,
            cmd,
        } => {
            let user = user
                .map(|u| {
                    u.split_once(':')
                        .and_then(|(o, c)| Some((o.parse::<u32>().ok()?, c.parse::<u32>().ok()?)))
                        .filter(|&(_, c)| c > 0)
                        .with_context(|| format!("--user {u}: not OUTSIDE:COUNT"))
                })
                .transpose()?;
            let argv = cmd
                .iter()
                .map(|a| std::ffi::CString::new(a.as_str()))
                .collect::<std::result::Result<Vec<_>, _>>()
                .context("command argument contains a NUL byte")?;
            let mut flags = 0u64;
            for (on, f) in [
                (uts, libc::CLONE_NEWUTS),
                (ipc, libc::CLONE_NEWIPC),
                (cgroup, libc::CLONE_NEWCGROUP),
                (time, libc::CLONE_NEWTIME),
            ] {
                if on {
                    flags |= f as u64;
                }
            }
            let root = root
                .map(|r| {
                    let abs = std::fs::canonicalize(&r)
                        .with_context(|| format!("--root {}", r.display()))?;
                    std::ffi::CString::new(abs.into_os_string().into_encoded_bytes())
                        .context("--root contains a NUL byte")
                })
                .transpose()?;
            let opts = stasis_sys::spawn::RunNs {
                user,
                flags,
                root,
                setup: None,
            };
            let pid = if net {
                run_net::spawn(argv, veth, net_addr, opts)
            } else {
                stasis_sys::spawn::run_in_pid_ns(&argv, opts).map_err(Into::into)
            }
            .with_context(|| format!("run {:?}", cmd[0]))?;
            if let Some(p) = pidfile {
                std::fs::write(&p, format!("{pid}\n"))
                    .with_context(|| format!("write pidfile {}", p.display()))?;
            }
            if detach {
                return Ok(ExitCode::SUCCESS);
            }
            let status =
                stasis_sys::util::waitpid(pid, 0).with_context(|| format!("wait for pid {pid}"))?;
            let code = match status {
                Some(s) if libc::WIFEXITED(s) => libc::WEXITSTATUS(s),
                Some(s) if libc::WIFSIGNALED(s) => 128 + libc::WTERMSIG(s),
                _ => 1,
            };
            Ok(ExitCode::from(code as u8))
        }
        Cmd::Show { path } => {
            let v = if path.is_dir() {
                stasis_image::show_dir(&path)?
            } else {
                stasis_image::show_file(&path)?
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::InstallCriuLink { dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("/usr/local/sbin"));
            let exe = std::env::current_exe()
                .and_then(std::fs::canonicalize)
                .context("find the stasis binary")?;
            let link = dir.join("criu");
            match std::fs::read_link(&link) {
                Ok(t) if t == exe => {}
                Ok(_) | Err(_) if link.symlink_metadata().is_ok() => bail!(
                    "{} exists and is not a link to {}: remove it first",
                    link.display(),
                    exe.display()
                ),
                _ => std::os::unix::fs::symlink(&exe, &link).with_context(|| {
                    format!("create link {} -> {}", link.display(), exe.display())
                })?,
            }
            println!("{} -> {}", link.display(), exe.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CriuOptions => {
            print!("{}", criu::table());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// An error and its causes on one line. Each layer's message already
/// includes its source in our error types: the outermost message, and the
/// rest only if new.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let mut line = chain[0].clone();
    for c in &chain[1..] {
        if !line.contains(c.as_str()) {
            line.push_str(": ");
            line.push_str(c);
        }
    }
    line
}

/// stasis's own commands (clap); anything else is a criu command line.
const OWN_COMMANDS: &[&str] = &[
    "bench",
    "run",
    "show",
    "install-criu-link",
    "criu-options",
    "help",
];

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The holder of a pre-dump's write trackers (started by the dumper).
    if argv.get(1).map(String::as_str) == Some(stasis_dump::track::HOLD_COMMAND) {
        return match stasis_dump::track::hold(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    // The watchdog of a lazy-pages daemon (started by the daemon).
    if argv.get(1).map(String::as_str) == Some(stasis_restore::lazy_daemon::WATCH_COMMAND) {
        return match stasis_restore::lazy_daemon::watch(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    // Installed as `criu`, stasis answers as criu (same parser either way).
    let prog = match argv.first().map(|a| Path::new(a).file_name()) {
        Some(Some(n)) if n == "criu" => "criu",
        _ => "stasis",
    };
    let own = argv
        .get(1)
        .is_some_and(|a| OWN_COMMANDS.contains(&a.as_str()));
    let result = if own {
        run(Cli::parse_from(&argv))
    } else {
        criu::parse(&argv[1..])
            .map_err(|e| anyhow::anyhow!(e))
            .and_then(|p| criu_cmd::prepare(p, prog))
            .and_then(|o| match o {
                criu_cmd::Outcome::Print(t) => {
                    print!("{t}");
                    Ok(ExitCode::SUCCESS)
                }
                criu_cmd::Outcome::Run(p) => p.run(),
            })
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let line = one_line(&e);
            // One line on stderr; the log file (if any) gets it too.
            if logger::to_file() {
                log::error!("{line}");
            }
            eprintln!("stasis: error: {line}");
            ExitCode::FAILURE
        }
    }
}
