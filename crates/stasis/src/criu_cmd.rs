//! Runs a criu command line: judges every option (applied, accepted with a
//! note, refused by name) before anything is done, then dumps, restores or
//! checks.

use crate::criu::{self, Fate, Given, Parsed};
use crate::{criu_check, logger, open_fds};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// What the options ask for, once judged.
#[derive(Debug, Default)]
struct Request {
    command: String,
    scope: u8,
    tree: Option<u32>,
    images_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    /// criu's level: 0 none .. 4 debug; None = default.
    verbosity: Option<u8>,
    leave_running: bool,
    shell_job: bool,
    file_locks: bool,
    /// criu's `--skip-in-flight`: drop connections waiting in a TCP
    /// listener's accept queue.
    skip_in_flight: bool,
    timeout: Option<u64>,
    ghost_limit: Option<u64>,
    detached: bool,
    pidfile: Option<PathBuf>,
    no_default_config: bool,
    close: Vec<i32>,
    feature: Option<String>,
    extra: bool,
    experimental: bool,
    allow_changed_files: bool,
    new_pid_ns: bool,
    /// criu's `--manage-cgroups [MODE]` (the last one given).
    manage_cgroups: Option<stasis_restore::CgroupMode>,
    /// criu's `--cgroup-root [CONTROLLER:]/PATH`, each one given.
    cgroup_roots: Vec<stasis_restore::CgroupRoot>,
    /// criu's `--root` and `--ext-mount-map KEY:PATH` (restore).
    mounts: stasis_restore::MountOptions,
    /// Notes for the log: accepted options and why they change nothing.
    notes: Vec<String>,
}

/// What the caller should do with a parsed command line.
pub enum Outcome {
    /// Print this and exit 0 (`--version`, `--help`).
    Print(String),
    Run(Box<Prepared>),
}

/// A judged command line, ready to run.
pub struct Prepared {
    req: Request,
}

pub fn version_text() -> String {
    format!(
        "Version: {}\nGitID: stasis-{}\n",
        criu::CRIU_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

fn number<T: std::str::FromStr>(g: &Given) -> Result<T> {
    let v = g.value.as_deref().unwrap_or("");
    v.trim()
        .parse::<T>()
        .map_err(|_| anyhow!("invalid argument for --{}: {v}", g.opt.long))
}

/// A size in bytes, with an optional K, M or G suffix (powers of 1024), as
/// criu's `--ghost-limit` takes it.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: not a size (bytes, or a number with K, M or G)"))?;
    n.checked_mul(1u64 << shift)
        .filter(|v| *v <= stasis_image::MAX_SAVED_FILE)
        .ok_or_else(|| {
            format!(
                "{s:?}: above the largest ghost limit ({} GiB)",
                stasis_image::MAX_SAVED_FILE >> 30
            )
        })
}

/// Applies one applied option.
fn apply(r: &mut Request, g: &Given) -> Result<()> {
    let on = !g.negated;
    let path = || PathBuf::from(g.value.clone().unwrap_or_default());
    match g.opt.long {
        "tree" => {
            let pid: i64 = number(g)?;
            if pid <= 0 || pid > i64::from(i32::MAX) {
                bail!("invalid argument for --tree: {pid}");
            }
            r.tree = Some(pid as u32);
        }
        "images-dir" => r.images_dir = Some(path()),
        "work-dir" => r.work_dir = Some(path()),
        "log-file" => r.log_file = Some(path()),
        "verbosity" => {
            // criu: -v raises the level by one from 2, -vv.. by their count,
            // -vN / --verbosity=N sets it.
            let cur = r.verbosity.unwrap_or(2);
            let lvl = match g.value.as_deref() {
                None => cur + 1,
                Some(v) if v.starts_with('v') => cur.saturating_add(v.len() as u8 + 1),
                Some(v) => v.parse::<u8>().unwrap_or(0),
            };
            r.verbosity = Some(lvl.min(4));
        }
        "leave-running" => r.leave_running = true,
        "shell-job" => r.shell_job = on,
        "file-locks" => r.file_locks = on,
        "skip-in-flight" => r.skip_in_flight = on,
        "timeout" => r.timeout = Some(number(g)?),
        "ghost-limit" => {
            r.ghost_limit = Some(
                parse_size(g.value.as_deref().unwrap_or(""))
                    .map_err(|e| anyhow!("invalid argument for --ghost-limit: {e}"))?,
            )
        }
        "restore-detached" | "daemon" => r.detached = on,
        "pidfile" => r.pidfile = Some(path()),
        "no-default-config" => r.no_default_config = true,
        "close" => r.close.push(number(g)?),
        "feature" => r.feature = g.value.clone(),
        "extra" => r.extra = on,
        "experimental" => r.experimental = on,
        "all" => {
            r.extra = true;
            r.experimental = true;
        }
        "allow-changed-files" => r.allow_changed_files = true,
        "new-pid-ns" => r.new_pid_ns = true,
        "manage-cgroups" => {
            // criu: the mode defaults to soft when the option has none.
            let v = g.value.as_deref().unwrap_or("soft");
            r.manage_cgroups = Some(
                stasis_restore::CgroupMode::parse(v)
                    .ok_or_else(|| anyhow!("invalid argument for --manage-cgroups: {v}"))?,
            );
        }
        "cgroup-root" => r.cgroup_roots.push(
            stasis_restore::CgroupRoot::parse(g.value.as_deref().unwrap_or(""))
                .map_err(|e| anyhow!("invalid argument for --cgroup-root: {e}"))?,
        ),
        "root" => r.mounts.root = g.value.clone(),
        "ext-mount-map" => {
            let v = g.value.as_deref().unwrap_or("");
            let (k, p) = v.split_once(':').unwrap_or((v, ""));
            r.mounts.ext_map.push((k.to_string(), p.to_string()));
        }
        "status-fd" => {
            let _: i32 = number(g)?;
        }
        "version" | "help" => {}
        other => bail!("internal: option --{other} is marked applied but not handled"),
    }
    Ok(())
}

/// criu's default configuration files, which criu would read.
fn default_configs() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/etc/criu/default.conf")];
    if let Some(h) = std::env::var_os("HOME") {
        v.push(Path::new(&h).join(".criu/default.conf"));
    }
    if let Some(c) = std::env::var_os("CRIU_CONFIG_FILE") {
        v.push(PathBuf::from(c));
    }
    v.into_iter().filter(|p| p.exists()).collect()
}

/// Judges a parsed criu command line. Errors are refusals: nothing has
/// been done.
pub fn prepare(p: Parsed, prog: &str) -> Result<Outcome> {
    // criu acts on -V and -h as soon as it meets them.
    for g in &p.given {
        match g.opt.long {
            "version" => return Ok(Outcome::Print(version_text())),
            "help" => return Ok(Outcome::Print(criu::usage(prog))),
            _ => {}
        }
    }
    let Some(command) = p.positionals.first().cloned() else {
        bail!("no command given (`{prog} --help` lists them)");
    };
    let Some(&(_, scope, implemented)) = criu::COMMANDS.iter().find(|c| c.0 == command) else {
        bail!("unknown command {command:?} (`{prog} --help` lists them)");
    };
    let mut r = Request {
        command: command.clone(),
        scope,
        ..Request::default()
    };
    if !implemented {
        // Its options parsed; the command itself is what stasis lacks.
        bail!("command {command} is not supported yet");
    }
    let mut refused = None;
    for g in &p.given {
        let fate = criu::judge_value(g).map_err(|e| anyhow!(e))?;
        let in_scope = g.opt.scope & scope != 0;
        match fate {
            _ if g.negated && !matches!(fate, Fate::Applied) => {
                r.notes.push(format!("{}: the default", g.spelled()));
            }
            Fate::Applied => apply(&mut r, g)?,
            _ if !in_scope => r.notes.push(format!(
                "{}: no effect on {command} (criu ignores it there too)",
                g.spelled()
            )),
            Fate::Accepted(note) => r.notes.push(format!("{}: accepted; {note}", g.spelled())),
            Fate::Refused | Fate::ByValue => {
                refused.get_or_insert_with(|| g.clone());
            }
        }
    }
    if let Some(g) = refused {
        bail!("option --{} is not supported yet", g.opt.long);
    }
    if r.extra_positional(&p) {
        bail!(
            "unexpected argument {:?} after {command}",
            p.positionals.get(1).cloned().unwrap_or_default()
        );
    }
    if matches!(command.as_str(), "dump" | "restore") && !r.no_default_config {
        if let Some(c) = default_configs().first() {
            bail!(
                "criu configuration file {} is not read by stasis: pass --no-default-config (or remove it)",
                c.display()
            );
        }
    }
    if command == "dump" && r.tree.is_none() {
        bail!("dump: the process tree to dump must be given with -t PID");
    }
    Ok(Outcome::Run(Box::new(Prepared { req: r })))
}

impl Request {
    fn extra_positional(&self, p: &Parsed) -> bool {
        p.positionals.len() > 1
    }

    fn images_dir(&self) -> PathBuf {
        self.images_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// criu works in the work directory (default: the images directory):
    /// relative log and pid files are relative to it.
    fn in_work_dir(&self, f: &Path) -> PathBuf {
        if f.is_relative() && f.as_os_str() != "-" {
            self.work_dir
                .clone()
                .unwrap_or_else(|| self.images_dir())
                .join(f)
        } else {
            f.to_path_buf()
        }
    }

    fn setup_log(&self, images_dir: Option<&Path>) -> Result<()> {
        let file = self.log_file.as_ref().map(|f| self.in_work_dir(f));
        if let (Some(f), Some(d)) = (&file, images_dir) {
            if f.starts_with(d) {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("create images directory {}", d.display()))?;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
            }
        }
        // criu's 0-4 scale, read as stasis's (0 errors .. 4 everything).
        logger::init(file.as_deref(), self.verbosity)?;
        for n in &self.notes {
            log::info!("{n}");
        }
        Ok(())
    }
}

impl Prepared {
    pub fn run(self) -> Result<ExitCode> {
        let r = self.req;
        // criu closes them as it parses them and goes on if one was not open.
        for &fd in &r.close {
            stasis_sys::util::close_fd(fd);
        }
        use std::io::IsTerminal;
        stasis_image::progress::set_enabled(
            r.scope & criu::CHECK == 0 && std::io::stderr().is_terminal(),
        );
        match r.command.as_str() {
            "dump" => dump(&r),
            "restore" => restore(&r),
            "check" => check(&r),
            other => bail!("command {other} is not supported yet"),
        }
    }
}

fn dump(r: &Request) -> Result<ExitCode> {
    let dir = r.images_dir();
    let pid = r.tree.context("dump: no -t PID")?;
    if let Some((m, _)) = r.mounts.ext_map.first() {
        bail!(
            "option --ext-mount-map {m}:KEY at dump is not supported yet: stasis names each \
             external mount by its host path (the KEY to map at restore)"
        );
    }
    r.setup_log(Some(&dir))?;
    let opts = stasis_dump::DumpOptions {
        pid,
        images_dir: dir.clone(),
        leave_running: r.leave_running,
        shell_job: r.shell_job,
        file_locks: r.file_locks,
        skip_in_flight: r.skip_in_flight,
        timeout: r.timeout.map(Duration::from_secs),
        ghost_limit: r.ghost_limit.unwrap_or(stasis_dump::DEFAULT_GHOST_LIMIT),
        cgroups: r.manage_cgroups != Some(stasis_restore::CgroupMode::Ignore),
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

fn restore(r: &Request) -> Result<ExitCode> {
    let dir = r.images_dir();
    r.setup_log(Some(&dir))?;
    let opts = stasis_restore::RestoreOptions {
        images_dir: dir.clone(),
        allow_changed_files: r.allow_changed_files,
        new_pid_ns: r.new_pid_ns,
        shell_job: r.shell_job,
        manage_cgroups: r.manage_cgroups.unwrap_or_default(),
        cgroup_roots: r.cgroup_roots.clone(),
        mounts: r.mounts.clone(),
    };
    let restored = stasis_restore::restore(&opts)?;
    let pid = restored.pid;
    if let Some(p) = &r.pidfile {
        let p = r.in_work_dir(p);
        std::fs::write(&p, format!("{pid}\n"))
            .with_context(|| format!("write pidfile {}", p.display()))?;
    }
    log::info!("restored pid {pid}");
    log::info!("descriptors open at exit: {}", open_fds());
    if r.detached {
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

/// stasis's own features without which it cannot work at all.
const NEEDED: &[&str] = &[
    "ptrace",
    "checkpoint_restore",
    "pagemap",
    "pagemap_scan",
    "clone3_set_tid",
    "pidfd",
];

fn check(r: &Request) -> Result<ExitCode> {
    r.setup_log(None)?;
    let features = stasis_sys::features::probe();
    if let Some(name) = &r.feature {
        if name == "list" {
            println!("{}", criu_check::names().collect::<Vec<_>>().join(" "));
            return Ok(ExitCode::SUCCESS);
        }
        return match criu_check::feature(name, &features) {
            Some(Ok(())) => {
                println!("{name} is supported");
                Ok(ExitCode::SUCCESS)
            }
            Some(Err(why)) => {
                eprintln!("stasis: {name} is not supported: {why}");
                Ok(ExitCode::FAILURE)
            }
            None => bail!("unknown feature {name} (`check --feature list` lists criu's)"),
        };
    }
    let mut all_needed = true;
    for f in &features {
        println!(
            "{:<22} {:<4} {}",
            f.name,
            if f.ok { "yes" } else { "no" },
            f.note
        );
        if !f.ok && NEEDED.contains(&f.name) {
            all_needed = false;
        }
    }
    if !all_needed {
        println!("Does not look good.");
        return Ok(ExitCode::FAILURE);
    }
    let more = criu_check::categories(r.extra, r.experimental, &features);
    let mut missing = false;
    for (name, res) in &more {
        match res {
            Ok(()) => println!("{name:<22} yes"),
            Err(why) => {
                missing = true;
                println!("{name:<22} no   {why}");
            }
        }
    }
    if missing {
        println!(
            "Looks good but some kernel features are missing\nwhich, depending on your process tree, may cause\ndump or restore failure."
        );
        Ok(ExitCode::FAILURE)
    } else {
        println!("Looks good.");
        Ok(ExitCode::SUCCESS)
    }
}
