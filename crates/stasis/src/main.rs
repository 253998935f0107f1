#![forbid(unsafe_code)]
//! `stasis`: checkpoint/restore for Linux processes.
//!
//! The command line follows criu's spelling for the options scripts use
//! (`dump -t PID -D DIR -o LOG -v4 -R -j`, `restore -D DIR -d --pidfile F`).

mod bench;
mod logger;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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

/// Options every command shares (criu's spelling).
#[derive(Args, Clone)]
struct Common {
    /// Log file; a relative path is relative to the images directory.
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Verbosity 0-4 (-v, -v4, -vvv, --verbosity=N). Default 2 in a log file.
    #[arg(short = 'v', long = "verbosity", value_name = "N", num_args = 0..=1, default_missing_value = "v", require_equals = false)]
    verbosity: Option<String>,
    /// Accepted for criu compatibility; stasis reads no configuration files.
    #[arg(long = "no-default-config")]
    no_default_config: bool,
    /// The process is a shell job: allow its terminal.
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Save and restore file locks and leases (dump refuses a process
    /// holding one without it). Nothing may take the locks between the
    /// dump and the restore.
    #[arg(short = 'l', long = "file-locks")]
    file_locks: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a running process into an image directory.
    Dump {
        /// PID of the process (root of the tree) to dump.
        #[arg(short = 't', long = "tree", value_name = "PID")]
        pid: u32,
        /// Image directory (created if missing).
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Leave the process running after the dump (default: kill it).
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// Give up after N seconds, leaving the process running.
        #[arg(long = "timeout", value_name = "N")]
        timeout: Option<u64>,
        /// Drop TCP connections waiting in a listener's accept queue (their
        /// clients see a reset); without it such a listener is refused.
        #[arg(long = "skip-in-flight")]
        skip_in_flight: bool,
        /// Accepted for criu compatibility; ignored.
        #[arg(long = "pre-dump-mode", value_name = "MODE")]
        pre_dump_mode: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Restore a process from an image directory.
    Restore {
        #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
        dir: PathBuf,
        /// Return once the process runs (default: wait for it and exit with its status).
        #[arg(short = 'd', long = "restore-detached")]
        detached: bool,
        /// Write the restored PID to FILE.
        #[arg(long = "pidfile", value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// Restore even if files changed size or mtime since the dump.
        #[arg(long = "allow-changed-files")]
        allow_changed_files: bool,
        /// Restore into a fresh PID namespace (PIDs taken here do not matter;
        /// a helper init becomes PID 1 unless the root was an init).
        #[arg(long = "new-pid-ns")]
        new_pid_ns: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Probe the kernel and print what stasis can use.
    Check {
        /// Exit 0 only if this feature is supported.
        #[arg(long = "feature", value_name = "NAME")]
        feature: Option<String>,
        #[command(flatten)]
        common: Common,
    },
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
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Print an image directory or file as JSON.
    Show {
        /// Image directory or one image file.
        path: PathBuf,
    },
}

fn parse_verbosity(v: &Option<String>) -> Result<Option<u8>> {
    match v.as_deref() {
        None => Ok(None),
        Some(s) if !s.is_empty() && s.chars().all(|c| c == 'v') => Ok(Some((s.len() as u8).min(4))),
        Some(s) => s
            .parse::<u8>()
            .map(|n| Some(n.min(4)))
            .with_context(|| format!("invalid verbosity {s:?}: expected 0-4")),
    }
}

fn setup_log(common: &Common, images_dir: Option<&Path>) -> Result<()> {
    let verbosity = parse_verbosity(&common.verbosity)?;
    let file = common.log_file.as_ref().map(|f| match images_dir {
        Some(d) if f.is_relative() && f.as_os_str() != "-" => d.join(f),
        _ => f.clone(),
    });
    if let (Some(f), Some(d)) = (&file, images_dir) {
        if f.starts_with(d) {
            std::fs::create_dir_all(d)
                .with_context(|| format!("create images directory {}", d.display()))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        }
    }
    logger::init(file.as_deref(), verbosity)
}

/// Descriptors stasis itself holds (logged after a dump or restore, so
/// tests can see that repeated runs leak nothing).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

fn run(cli: Cli) -> Result<ExitCode> {
    // A progress bar for long page transfers, when someone is watching.
    use std::io::IsTerminal;
    stasis_image::progress::set_enabled(
        matches!(cli.cmd, Cmd::Dump { .. } | Cmd::Restore { .. })
            && std::io::stderr().is_terminal(),
    );
    match cli.cmd {
        Cmd::Dump {
            pid,
            dir,
            leave_running,
            timeout,
            skip_in_flight,
            pre_dump_mode: _,
            common,
        } => {
            setup_log(&common, Some(&dir))?;
            let _ = common.no_default_config;
            let opts = stasis_dump::DumpOptions {
                pid,
                images_dir: dir.clone(),
                leave_running,
                shell_job: common.shell_job,
                file_locks: common.file_locks,
                skip_in_flight,
                timeout: timeout.map(Duration::from_secs),
            };
            let stats = stasis_dump::dump(&opts)?;
            log::info!(
                "dumped pid {pid} to {}: {} vmas, {} page runs, {} bytes of pages, stopped {:?}",
                dir.display(),
                stats.vmas,
                stats.page_runs,
                stats.page_bytes,
                stats.frozen
            );
            log::info!("descriptors open at exit: {}", open_fds());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore {
            dir,
            detached,
            pidfile,
            allow_changed_files,
            new_pid_ns,
            common,
        } => {
            setup_log(&common, Some(&dir))?;
            let opts = stasis_restore::RestoreOptions {
                images_dir: dir.clone(),
                allow_changed_files,
                new_pid_ns,
                shell_job: common.shell_job,
            };
            let restored = stasis_restore::restore(&opts)?;
            let pid = restored.pid;
            if let Some(p) = pidfile {
                std::fs::write(&p, format!("{pid}\n"))
                    .with_context(|| format!("write pidfile {}", p.display()))?;
            }
            log::info!("restored pid {pid}");
            log::info!("descriptors open at exit: {}", open_fds());
            if detached {
                return Ok(ExitCode::SUCCESS);
            }
            let status = stasis_sys::util::waitpid(restored.wait_pid, 0)
                .with_context(|| format!("wait for restored pid {pid}"))?;
            let code = match status {
                Some(s) if libc::WIFEXITED(s) => libc::WEXITSTATUS(s),
                Some(s) if libc::WIFSIGNALED(s) => 128 + libc::WTERMSIG(s),
                _ => 1,
            };
            log::info!("restored pid {pid} exited with {code}");
            Ok(ExitCode::from(code as u8))
        }
        Cmd::Check { feature, common } => {
            setup_log(&common, None)?;
            let features = stasis_sys::features::probe();
            if let Some(name) = feature {
                let f = features.iter().find(|f| f.name == name);
                match f {
                    Some(f) if f.ok => {
                        println!("{name}: supported");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Some(_) => {
                        println!("{name}: not supported");
                        return Ok(ExitCode::FAILURE);
                    }
                    None => bail!("unknown feature {name:?}; `stasis check` lists them"),
                }
            }
            let mut all_needed = true;
            for f in &features {
                println!(
                    "{:<20} {:<4} {}",
                    f.name,
                    if f.ok { "yes" } else { "no" },
                    f.note
                );
                if !f.ok
                    && matches!(
                        f.name,
                        "ptrace"
                            | "checkpoint_restore"
                            | "pagemap"
                            | "pagemap_scan"
                            | "clone3_set_tid"
                            | "pidfd"
                    )
                {
                    all_needed = false;
                }
            }
            if all_needed {
                println!("Looks good.");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("Some features stasis needs are missing.");
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Bench(args) => {
            bench::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            detach,
            pidfile,
            cmd,
        } => {
            let argv = cmd
                .iter()
                .map(|a| std::ffi::CString::new(a.as_str()))
                .collect::<std::result::Result<Vec<_>, _>>()
                .context("command argument contains a NUL byte")?;
            let pid = stasis_sys::spawn::run_in_pid_ns(&argv)
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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            // Each layer's message already includes its source in our error
            // types; print the outermost message, and the rest only if new.
            let mut line = chain[0].clone();
            for c in &chain[1..] {
                if !line.contains(c.as_str()) {
                    line.push_str(": ");
                    line.push_str(c);
                }
            }
            log::error!("{line}");
            eprintln!("stasis: error: {line}");
            ExitCode::FAILURE
        }
    }
}
