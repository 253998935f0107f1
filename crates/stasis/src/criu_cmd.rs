//! Runs a criu command line: judges every option (applied, accepted with a
//! note, refused by name) before anything is done, then dumps, restores or
//! checks.

use crate::criu::{self, Fate, Given, Parsed};
use crate::{criu_check, logger, open_fds};
use anyhow::{anyhow, bail, Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// What the options ask for, once judged.
#[derive(Debug, Default, Clone)]
pub(crate) struct Request {
    pub(crate) command: String,
    pub(crate) scope: u8,
    pub(crate) tree: Option<u32>,
    pub(crate) images_dir: Option<PathBuf>,
    pub(crate) work_dir: Option<PathBuf>,
    pub(crate) log_file: Option<PathBuf>,
    /// criu's level: 0 none .. 4 debug; None = default.
    pub(crate) verbosity: Option<u8>,
    pub(crate) leave_running: bool,
    pub(crate) shell_job: bool,
    pub(crate) file_locks: bool,
    /// criu's `--skip-in-flight`: drop connections waiting in a TCP
    /// listener's accept queue.
    pub(crate) skip_in_flight: bool,
    /// criu's `--ext-unix-sk` (without an inode list).
    pub(crate) ext_unix_sk: bool,
    /// criu's `--external unix[INO]`: these sockets only.
    pub(crate) ext_unix_inos: Vec<u64>,
    /// criu's `--external file[MNT_ID:INODE]` (dump).
    pub(crate) ext_files: Vec<String>,
    /// criu's `--external dev[MAJOR/MINOR]:NAME` (dump).
    pub(crate) ext_devs: Vec<((u32, u32), String)>,
    /// criu's `--tcp-established`, `--tcp-close`, `--network-lock`.
    pub(crate) tcp_established: bool,
    pub(crate) tcp_close: bool,
    pub(crate) network_lock: Option<stasis_sys::netlock::Method>,
    pub(crate) timeout: Option<u64>,
    pub(crate) ghost_limit: Option<u64>,
    pub(crate) detached: bool,
    /// criu's `--restore-sibling`: the restored tree is our parent's child.
    pub(crate) sibling: bool,
    pub(crate) pidfile: Option<PathBuf>,
    pub(crate) no_default_config: bool,
    pub(crate) close: Vec<i32>,
    pub(crate) feature: Option<String>,
    pub(crate) extra: bool,
    pub(crate) experimental: bool,
    pub(crate) allow_changed_files: bool,
    pub(crate) new_pid_ns: bool,
    /// criu's `--manage-cgroups [MODE]` (the last one given).
    pub(crate) manage_cgroups: Option<stasis_restore::CgroupMode>,
    /// criu's `--cgroup-root [CONTROLLER:]/PATH`, each one given.
    pub(crate) cgroup_roots: Vec<stasis_restore::CgroupRoot>,
    /// criu's `--prev-images-dir` (relative to the images directory).
    pub(crate) prev_images_dir: Option<PathBuf>,
    pub(crate) track_mem: bool,
    /// criu's `--lazy-pages` (dump: serve the pages on request; restore:
    /// leave private anonymous memory to the lazy-pages daemon).
    pub(crate) lazy_pages: bool,
    /// criu's `--page-server`, `--port`.
    pub(crate) page_server: bool,
    pub(crate) port: Option<u16>,
    /// criu's `--address`: the page server's host, or `service`'s socket path.
    pub(crate) address: Option<String>,
    /// criu's `--tls` and its `--tls-*` files: the page server's
    /// connections are TLS, both ends authenticated.
    pub(crate) tls: bool,
    pub(crate) tls_options: stasis_restore::tls::TlsOptions,
    /// `--compress[=zstd[:LEVEL]]` (stasis's own): compress the page
    /// files once the image is complete.
    pub(crate) compress: Option<stasis_image::compress::Compression>,
    /// `--to-stdout` (dump) / `--from-stdin` (restore), stasis's own: the
    /// image as one stream (see `stream.rs`).
    pub(crate) to_stdout: bool,
    pub(crate) from_stdin: bool,
    /// `--max-rounds N` (`stasis migrate`): most pre-copy rounds.
    pub(crate) max_rounds: Option<u32>,
    /// criu's `--action-script`: run at each action point.
    pub(crate) action_scripts: Vec<String>,
    /// The command's argument (`swrk FD`).
    pub(crate) argument: Option<String>,
    /// criu's `--root` and `--ext-mount-map KEY:PATH` (restore; at dump
    /// MOUNTPOINT:KEY), `--inherit-fd fd[N]:KEY` (restore).
    pub(crate) mounts: stasis_restore::MountOptions,
    /// criu's `--veth-pair`, `--external veth[...]`, `--external macvlan[...]`, `--join-ns net:PATH`.
    pub(crate) net: stasis_restore::NetOptions,
    /// criu's `--cpu-cap` for `cpuinfo check` (criu's CPU_CAP_* bits).
    pub(crate) cpu_cap: Option<u32>,
    /// criu's `--freeze-cgroup`: every process of this cgroup must be in
    /// the tree (stasis freezes the tree itself, with ptrace).
    pub(crate) freeze_cgroup: Option<String>,
    /// Notes for the log: accepted options and why they change nothing.
    pub(crate) notes: Vec<String>,
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
        "ext-unix-sk" => {
            r.ext_unix_sk = on;
            for i in g.value.as_deref().unwrap_or("").split(',') {
                if let Ok(ino) = i.trim().parse() {
                    r.ext_unix_inos.push(ino);
                }
            }
        }
        "tcp-established" => r.tcp_established = on,
        "tcp-close" => r.tcp_close = on,
        "network-lock" => {
            r.network_lock = g
                .value
                .as_deref()
                .and_then(stasis_sys::netlock::Method::parse)
        }
        "timeout" => r.timeout = Some(number(g)?),
        "ghost-limit" => {
            r.ghost_limit = Some(
                parse_size(g.value.as_deref().unwrap_or(""))
                    .map_err(|e| anyhow!("invalid argument for --ghost-limit: {e}"))?,
            )
        }
        "restore-detached" | "daemon" => r.detached = on,
        "restore-sibling" => r.sibling = on,
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
        "prev-images-dir" => r.prev_images_dir = Some(path()),
        "track-mem" => r.track_mem = on,
        "lazy-pages" => r.lazy_pages = on,
        "page-server" => r.page_server = on,
        "address" => r.address = g.value.clone(),
        "tls" => r.tls = on,
        "tls-cacert" => r.tls_options.cacert = Some(path()),
        "tls-cacrl" => r.tls_options.cacrl = Some(path()),
        "tls-cert" => r.tls_options.cert = Some(path()),
        "tls-key" => r.tls_options.key = Some(path()),
        "tls-no-cn-verify" => r.tls_options.no_cn_verify = true,
        "port" => r.port = Some(number(g)?),
        "action-script" => r.action_scripts.push(g.value.clone().unwrap_or_default()),
        "new-pid-ns" => r.new_pid_ns = true,
        "compress" => {
            r.compress = Some(
                stasis_image::compress::Compression::parse(g.value.as_deref())
                    .map_err(|e| anyhow!("invalid argument for --compress: {e}"))?,
            )
        }
        "to-stdout" => r.to_stdout = true,
        "from-stdin" => r.from_stdin = true,
        "max-rounds" => r.max_rounds = Some(number(g)?),
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
        "veth-pair" => {
            let v = g.value.as_deref().unwrap_or("");
            let m = criu::veth_spec(g.opt.long, v)
                .ok_or_else(|| anyhow!("invalid argument for --{}: {v}", g.opt.long))?;
            r.net.veths.push(m);
        }
        "external" => {
            let v = g.value.as_deref().unwrap_or("");
            match criu::External::parse(v)
                .map_err(|e| anyhow!("invalid argument for --external: {e}"))?
            {
                criu::External::Veth(m) => r.net.veths.push(m),
                // criu: MOUNTPOINT:KEY at dump, KEY:PATH at restore, as
                // --ext-mount-map.
                criu::External::Mount(a, b) => r.mounts.ext_map.push((a, b)),
                criu::External::Unix(ino) => r.ext_unix_inos.push(ino),
                criu::External::Macvlan(m) => r.net.macvlans.push(m),
                criu::External::File(key) => r.ext_files.push(key),
                // criu: MAJOR/MINOR:NAME at dump, NAME:DEVPATH at restore.
                criu::External::Device(id, val) if r.command == "restore" => {
                    r.mounts.ext_devs.push((id, val))
                }
                criu::External::Device(id, val) => {
                    let dev = id
                        .split_once('/')
                        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                        .ok_or_else(|| anyhow!("invalid argument for --external: {v} (criu's dev[MAJOR/MINOR]:NAME at dump)"))?;
                    r.ext_devs.push((dev, val));
                }
                criu::External::AutoMounts | criu::External::Unsupported(_) => {}
            }
        }
        "join-ns" => {
            let v = g.value.as_deref().unwrap_or("");
            r.net.join = Some(PathBuf::from(v.strip_prefix("net:").unwrap_or(v)));
        }
        "freeze-cgroup" => r.freeze_cgroup = g.value.clone(),
        "inherit-fd" => {
            let v = g.value.as_deref().unwrap_or("");
            let parsed = v
                .strip_prefix("fd[")
                .and_then(|x| x.split_once("]:"))
                .and_then(|(n, k)| Some((n.parse::<i32>().ok()?, k)))
                .filter(|(n, k)| *n >= 0 && !k.is_empty());
            let Some((fd, key)) = parsed else {
                bail!("invalid argument for --inherit-fd: {v} (criu's fd[N]:KEY)");
            };
            r.mounts.inherit.push((fd, key.to_string()));
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

/// Applies every given option to `r` (its command and scope set), noting
/// accepted ones; returns the first refused option, if any. An invalid
/// value is an error.
pub(crate) fn judge_all(r: &mut Request, given: &[Given]) -> Result<Option<Given>> {
    let mut refused = None;
    for g in given {
        // --address is the page server's on dump, the listener's on service.
        let fate = if g.opt.long == "address" && r.command == "service" {
            Fate::Applied
        } else if g.opt.long == "cpu-cap" && r.command == "cpuinfo" {
            // What `cpuinfo check` compares (elsewhere only a note).
            r.cpu_cap = Some(
                crate::cpuinfo::parse_caps(g.value.as_deref())
                    .ok_or_else(|| anyhow!("invalid argument for --cpu-cap: {:?}", g.value))?,
            );
            continue;
        } else {
            criu::judge_value(g).map_err(|e| anyhow!(e))?
        };
        let in_scope = g.opt.scope & r.scope != 0;
        match fate {
            _ if g.negated && !matches!(fate, Fate::Applied) => {
                r.notes.push(format!("{}: the default", g.spelled()));
            }
            Fate::Applied => apply(r, g)?,
            _ if !in_scope => r.notes.push(format!(
                "{}: no effect on {} (criu ignores it there too)",
                g.spelled(),
                r.command
            )),
            Fate::Accepted(note) => r.notes.push(format!("{}: accepted; {note}", g.spelled())),
            Fate::Refused | Fate::ByValue => {
                refused.get_or_insert_with(|| g.clone());
            }
        }
    }
    Ok(refused)
}

/// The one-line refusal of an option.
pub(crate) fn refusal(g: &Given) -> String {
    match g.opt.long {
        "stream" => "option --stream (criu's image-streamer socket) is not supported yet: \
                     stasis streams an image with `dump --to-stdout` and `restore --from-stdin`"
            .to_string(),
        "external" => match g.value.as_deref().map(criu::External::parse) {
            Some(Ok(criu::External::Unsupported(why))) => why,
            _ => "option --external is not supported yet".to_string(),
        },
        long => format!("option --{long} is not supported yet"),
    }
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
    if let Some(g) = judge_all(&mut r, &p.given)? {
        bail!("{}", refusal(&g));
    }
    if r.extra_positional(&p) {
        bail!(
            "unexpected argument {:?} after {command}",
            p.positionals.get(1).cloned().unwrap_or_default()
        );
    }
    if matches!(command.as_str(), "dump" | "restore" | "migrate") && !r.no_default_config {
        if let Some(c) = default_configs().first() {
            bail!(
                "criu configuration file {} is not read by stasis: pass --no-default-config (or remove it)",
                c.display()
            );
        }
    }
    r.argument = p.positionals.get(1).cloned();
    if command == "cpuinfo" && !matches!(r.argument.as_deref(), Some("dump" | "check")) {
        bail!("cpuinfo: say dump or check (criu's `cpuinfo dump|check`)");
    }
    if command == "swrk" && r.argument.is_none() {
        bail!("swrk: the socket's descriptor must be given (swrk FD)");
    }
    if matches!(command.as_str(), "dump" | "pre-dump" | "migrate") && r.tree.is_none() {
        bail!("{command}: the process tree to dump must be given with -t PID");
    }
    Ok(Outcome::Run(Box::new(Prepared { req: r })))
}

impl Request {
    /// The page server's TLS options, if `--tls` was given.
    pub(crate) fn tls(&self) -> Option<&stasis_restore::tls::TlsOptions> {
        self.tls.then_some(&self.tls_options)
    }

    /// `--tls` and its options as given, for a command we start.
    pub(crate) fn tls_args(&self) -> Vec<std::ffi::OsString> {
        let mut v = Vec::new();
        let Some(t) = self.tls() else {
            return v;
        };
        v.push("--tls".into());
        for (flag, p) in [
            ("--tls-cacert", &t.cacert),
            ("--tls-cacrl", &t.cacrl),
            ("--tls-cert", &t.cert),
            ("--tls-key", &t.key),
        ] {
            if let Some(p) = p {
                v.push(flag.into());
                v.push(p.into());
            }
        }
        if t.no_cn_verify {
            v.push("--tls-no-cn-verify".into());
        }
        v
    }

    fn extra_positional(&self, p: &Parsed) -> bool {
        // `swrk FD` and `cpuinfo dump|check` take one argument.
        p.positionals.len() > 1 + usize::from(matches!(self.command.as_str(), "swrk" | "cpuinfo"))
    }

    pub(crate) fn images_dir(&self) -> PathBuf {
        self.images_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// criu works in the work directory (default: the images directory):
    /// relative log and pid files are relative to it.
    pub(crate) fn in_work_dir(&self, f: &Path) -> PathBuf {
        if f.is_relative() && f.as_os_str() != "-" {
            self.work_dir
                .clone()
                .unwrap_or_else(|| self.images_dir())
                .join(f)
        } else {
            f.to_path_buf()
        }
    }

    pub(crate) fn setup_log(&self, images_dir: Option<&Path>) -> Result<()> {
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
        stasis_image::progress::set_enabled(
            r.scope & criu::CHECK == 0 && std::io::stderr().is_terminal(),
        );
        match r.command.as_str() {
            "dump" | "pre-dump" => dump(
                &r,
                &mut crate::action::scripts(&r.action_scripts, &r.images_dir()),
            ),
            "page-server" => page_server(&r),
            "cpuinfo" => cpuinfo(&r),
            "migrate" => crate::migrate::migrate(&r),
            "lazy-pages" => lazy_pages(&r),
            "dedup" => dedup(&r),
            "restore" => restore(&r),
            "check" => check(&r),
            "swrk" => crate::rpc::swrk(&r),
            "service" => crate::rpc::service(&r),
            other => bail!("command {other} is not supported yet"),
        }
    }
}

/// criu's `dedup -D DIR`: criu punches holes in the parent images for the
/// pages DIR overrides; stasis merges the chain into DIR instead (every
/// page DIR takes from a parent is copied into it, the parent link is
/// dropped), so DIR restores alone and the parents may be deleted.
fn dedup(r: &Request) -> Result<ExitCode> {
    let dir = r.images_dir();
    // Before the log, which goes into the image directory by default.
    if !dir.join(stasis_image::INVENTORY_FILE).is_file() {
        bail!(
            "dedup {}: not an image (no {}): nothing was changed",
            dir.display(),
            stasis_image::INVENTORY_FILE
        );
    }
    r.setup_log(None)?;
    let t = std::time::Instant::now();
    let d = stasis_image::dedup::dedup(&dir)
        .with_context(|| format!("dedup {}: nothing was changed", dir.display()))?;
    if d.parents == 0 {
        log::info!(
            "dedup {}: no parent image: already standalone",
            dir.display()
        );
    } else {
        log::info!(
            "dedup {}: merged {} parent image(s): {} bytes of pages copied into {} process(es) in {:?}",
            dir.display(),
            d.parents,
            d.copied,
            d.processes,
            t.elapsed()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// criu's `cpuinfo dump|check -D DIR [--cpu-cap CAPS]`.
pub(crate) fn cpuinfo(r: &Request) -> Result<ExitCode> {
    r.setup_log(None)?;
    let dir = r.images_dir();
    match r.argument.as_deref() {
        Some("dump") => crate::cpuinfo::dump(&dir)?,
        _ => crate::cpuinfo::check(&dir, r.cpu_cap.unwrap_or(crate::cpuinfo::CAP_DEFAULT))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Set by the RPC's PAGE_SERVER: once listening, the page server writes
/// its port (a free one for port 0) as one line on stdout.
pub(crate) const PS_ANNOUNCE: &str = "STASIS_PAGE_SERVER_ANNOUNCE";

fn page_server(r: &Request) -> Result<ExitCode> {
    use std::io::Write;
    let dir = r.images_dir();
    r.setup_log(None)?;
    if r.detached {
        bail!("page-server: --daemon is not supported yet");
    }
    let port = r.port.context("page-server: --port is required")?;
    if let Some(p) = &r.pidfile {
        let p = r.in_work_dir(p);
        std::fs::write(&p, format!("{}\n", std::process::id()))
            .with_context(|| format!("write pidfile {}", p.display()))?;
    }
    let l = crate::page_server::listen(r.address.as_deref(), port, r.tls())?;
    if std::env::var_os(PS_ANNOUNCE).is_some() {
        let bound = l.tcp.local_addr().context("page server: its port")?.port();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{bound}")
            .and_then(|()| out.flush())
            .context("page server: announce the port")?;
    }
    crate::page_server::serve_on(&l, &dir)?;
    Ok(ExitCode::SUCCESS)
}

/// The dump options `r` asks for, for an image in `dir`; `pre`: a
/// pre-dump (leaves the tree running and tracks writes).
pub(crate) fn dump_options(
    r: &Request,
    pid: u32,
    dir: PathBuf,
    prev: Option<PathBuf>,
    pre: bool,
) -> stasis_dump::DumpOptions {
    stasis_dump::DumpOptions {
        pid,
        images_dir: dir,
        prev_images_dir: prev,
        track_mem: pre || r.track_mem,
        pre_dump: pre,
        leave_running: pre || r.leave_running,
        shell_job: r.shell_job,
        file_locks: r.file_locks,
        skip_in_flight: r.skip_in_flight,
        ext_unix_sk: r.ext_unix_sk,
        ext_unix_inos: r.ext_unix_inos.clone(),
        ext_files: r.ext_files.clone(),
        ext_devs: r.ext_devs.clone(),
        tcp_established: r.tcp_established,
        tcp_close: r.tcp_close,
        // criu's default.
        network_lock: r
            .network_lock
            .unwrap_or(stasis_sys::netlock::Method::Iptables),
        timeout: r.timeout.map(Duration::from_secs),
        ghost_limit: r.ghost_limit.unwrap_or(stasis_dump::DEFAULT_GHOST_LIMIT),
        cgroups: r.manage_cgroups != Some(stasis_restore::CgroupMode::Ignore),
        // At dump criu reads --ext-mount-map as MOUNTPOINT:KEY.
        ext_mounts: r.mounts.ext_map.clone(),
        free_memory_later: false,
    }
}

/// Compresses the page files of the image in `dir` if `r` asks for it
/// (after the dump: the tree is no longer frozen).
pub(crate) fn compress_if_asked(r: &Request, pid: u32, dir: &Path) -> Result<()> {
    let Some(c) = r.compress else { return Ok(()) };
    let t = std::time::Instant::now();
    let sizes = stasis_image::compress::compress_image(dir, c).with_context(|| {
        format!(
            "dump pid {pid}: compressing the page files (the image in {} is complete, uncompressed)",
            dir.display()
        )
    })?;
    log::info!(
        "compressed the page files of {} with zstd level {}: {} -> {} bytes in {:?}",
        dir.display(),
        c.level,
        sizes.raw,
        sizes.stored,
        t.elapsed()
    );
    Ok(())
}

/// criu's socket between `restore --lazy-pages` and `lazy-pages`: in the
/// work directory.
pub(crate) fn lazy_socket(r: &Request) -> PathBuf {
    r.in_work_dir(Path::new(stasis_restore::lazy::SOCKET_NAME))
}

/// criu's `lazy-pages -D DIR [--page-server --address A --port P]`: serves
/// the lazy restore of the image in DIR until every page is in place.
fn lazy_pages(r: &Request) -> Result<ExitCode> {
    let dir = r.images_dir();
    r.setup_log(Some(&dir))?;
    if r.detached {
        bail!("lazy-pages: --daemon is not supported yet");
    }
    let remote = match (r.page_server, r.port) {
        (false, _) => None,
        (true, None) => bail!("lazy-pages: --page-server needs --port"),
        (true, Some(p)) => Some((r.address.clone().unwrap_or_else(|| "127.0.0.1".into()), p)),
    };
    if let Some(p) = &r.pidfile {
        let p = r.in_work_dir(p);
        std::fs::write(&p, format!("{}\n", std::process::id()))
            .with_context(|| format!("write pidfile {}", p.display()))?;
    }
    let opts = stasis_restore::lazy_daemon::DaemonOptions {
        images_dir: dir.clone(),
        socket: lazy_socket(r),
        remote,
        tls: r.tls().cloned(),
    };
    let st = stasis_restore::lazy_daemon::run(&opts).map_err(|e| anyhow!("lazy-pages: {e}"))?;
    log::info!(
        "lazy-pages: every page in place {:?} after the resume: {} faults ({} bytes), {} bytes streamed, {} zero pages, {} forks",
        st.resident_after,
        st.faults,
        st.fault_bytes,
        st.streamed_bytes,
        st.zero_pages,
        st.forks
    );
    Ok(ExitCode::SUCCESS)
}

/// Dumps as `r` asks, calling `hook` at criu's action points.
pub(crate) fn dump(r: &Request, hook: stasis_dump::ActionHook<'_>) -> Result<ExitCode> {
    let pid = r.tree.context("dump: no -t PID")?;
    // The stream's image is written first into -D, or a private directory.
    let scratch = match (r.to_stdout, &r.images_dir) {
        (true, None) => Some(crate::stream::ScratchDir::new("dump")?),
        _ => None,
    };
    let dir = scratch
        .as_ref()
        .map(|s| s.path().to_path_buf())
        .unwrap_or_else(|| r.images_dir());
    if r.to_stdout && r.page_server {
        bail!(
            "dump pid {pid}: --to-stdout and --page-server both say where the image goes: give one"
        );
    }
    if r.to_stdout && r.prev_images_dir.is_some() {
        bail!(
            "dump pid {pid}: --to-stdout with --prev-images-dir is not supported yet: the stream \
             would not hold the parent images (`stasis migrate` sends a whole chain)"
        );
    }
    if r.to_stdout && std::io::stdout().is_terminal() {
        bail!("dump pid {pid}: --to-stdout: stdout is a terminal, not a pipe or file");
    }
    r.setup_log(Some(&dir))?;
    if let Some(cg) = &r.freeze_cgroup {
        crate::freeze_cgroup::check(cg, pid)?;
    }
    if r.lazy_pages
        && (r.command == "pre-dump" || r.page_server || r.to_stdout || r.compress.is_some())
    {
        bail!(
            "dump pid {pid}: --lazy-pages serves the pages itself: not with pre-dump, --page-server, --to-stdout or --compress"
        );
    }
    let lazy_port = match (r.lazy_pages, r.port) {
        (true, None) => bail!("dump pid {pid}: --lazy-pages needs --port"),
        (true, Some(p)) => Some(p),
        _ => None,
    };
    // Connected before anything is frozen: no server, no dump.
    let server = match (r.page_server, r.port) {
        (false, _) => None,
        (true, None) => bail!("dump pid {pid}: --page-server needs --port"),
        (true, Some(port)) => Some(
            crate::page_server::connect(r.address.as_deref(), port, r.tls())
                .with_context(|| format!("dump pid {pid}"))?,
        ),
    };
    // criu's pre-dump saves memory and leaves the tree running, tracking
    // writes for the next round; stasis's resumes the tree before it
    // copies the pages (a brief round) and writes the other state too.
    let pre = r.command == "pre-dump";
    let opts = dump_options(r, pid, dir.clone(), r.prev_images_dir.clone(), pre);
    let stats = stasis_dump::dump_with(&opts, hook)?;
    if let Err(e) = compress_if_asked(r, pid, &dir) {
        // Without -R the tree is gone: keep its (uncompressed) image.
        let kept = scratch.map(|s| s.keep()).unwrap_or(dir);
        return Err(e.context(format!("the image is kept in {}", kept.display())));
    }
    log::info!(
        "dumped pid {pid} to {}: {} vmas, {} page runs, {} bytes of pages, {} bytes in the parent image, stopped {:?}",
        dir.display(),
        stats.vmas,
        stats.page_runs,
        stats.page_bytes,
        stats.parent_bytes,
        stats.frozen
    );
    if let Some(s) = server {
        let sent = crate::page_server::send(s, &dir).with_context(|| {
            format!(
                "dump pid {pid}: sending the image to the page server (the image is complete in {})",
                dir.display()
            )
        })?;
        log::info!("sent {sent} bytes of image to the page server");
    }
    if let Some(port) = lazy_port {
        // criu's dump --lazy-pages: the image is complete in -D; its pages
        // are served on request until the lazy-pages daemon has them all.
        let sent = stasis_restore::lazy_source::serve(
            r.address.as_deref().unwrap_or("0.0.0.0"),
            port,
            &dir,
            r.tls(),
        )
        .map_err(|e| anyhow!("dump pid {pid}: {e}"))?;
        log::info!("served {sent} bytes of pages to the lazy-pages daemon");
    }
    if r.to_stdout {
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        let sent = crate::stream::Sender::new(out).and_then(|mut tx| {
            tx.send_dir(&dir, None)?;
            tx.finish()
        });
        match sent {
            Ok((_, n)) => log::info!("wrote {n} bytes of image to stdout"),
            Err(e) => {
                // The tree may be gone: this image is all that is left of it.
                let kept = scratch.map(|s| s.keep()).unwrap_or(dir);
                return Err(e.context(format!(
                    "dump pid {pid}: writing the image stream to stdout (the image is complete in {})",
                    kept.display()
                )));
            }
        }
    }
    log::info!("descriptors open at exit: {}", open_fds());
    Ok(ExitCode::SUCCESS)
}

/// Restores as `r` asks, calling `hook` at criu's action points; the tree
/// runs as our child.
pub(crate) fn restore_tree(
    r: &Request,
    hook: stasis_restore::ActionHook<'_>,
) -> Result<stasis_restore::Restored> {
    let dir = r.images_dir();
    r.setup_log(Some(&dir))?;
    let opts = stasis_restore::RestoreOptions {
        images_dir: dir.clone(),
        allow_changed_files: r.allow_changed_files,
        new_pid_ns: r.new_pid_ns,
        shell_job: r.shell_job,
        manage_cgroups: r.manage_cgroups.unwrap_or_default(),
        cgroup_roots: r.cgroup_roots.clone(),
        tcp_close: r.tcp_close,
        mounts: r.mounts.clone(),
        net: r.net.clone(),
        sibling: r.sibling,
        lazy_pages: r.lazy_pages.then(|| lazy_socket(r)),
    };
    let restored = stasis_restore::restore_with(&opts, hook)?;
    let pid = restored.pid;
    if let Some(p) = &r.pidfile {
        let p = r.in_work_dir(p);
        std::fs::write(&p, format!("{pid}\n"))
            .with_context(|| format!("write pidfile {}", p.display()))?;
    }
    log::info!("restored pid {pid}");
    log::info!("descriptors open at exit: {}", open_fds());
    Ok(restored)
}

fn restore(r: &Request) -> Result<ExitCode> {
    if r.from_stdin {
        return restore_from_stdin(r);
    }
    let dir = r.images_dir();
    // criu's rule: the caller waits for a sibling, so we must not.
    if r.sibling && !r.detached {
        bail!("restore: --restore-sibling only makes sense with --restore-detached");
    }
    let restored = restore_tree(r, &mut crate::action::scripts(&r.action_scripts, &dir))?;
    let pid = restored.pid;
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

/// `restore --from-stdin`: the stream goes into -D (or a private
/// directory, removed afterwards), then the restore runs from there.
fn restore_from_stdin(r: &Request) -> Result<ExitCode> {
    if std::io::stdin().is_terminal() {
        bail!("restore --from-stdin: stdin is a terminal, not a pipe or file");
    }
    let scratch = match &r.images_dir {
        None => Some(crate::stream::ScratchDir::new("restore")?),
        Some(_) => None,
    };
    let dir = scratch
        .as_ref()
        .map(|s| s.path().to_path_buf())
        .unwrap_or_else(|| r.images_dir());
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
    let n = crate::stream::receive(&mut input, &dir)
        .with_context(|| format!("restore --from-stdin into {}", dir.display()))?;
    let mut inner = Request {
        images_dir: Some(dir),
        from_stdin: false,
        // Relative log and pid files stay where they would have been.
        work_dir: Some(r.work_dir.clone().unwrap_or_else(|| r.images_dir())),
        ..r.clone()
    };
    inner
        .notes
        .push(format!("read {n} bytes of image from stdin"));
    restore(&inner)
}

/// stasis's own features without which it cannot work at all.
pub(crate) const NEEDED: &[&str] = &[
    "ptrace",
    "checkpoint_restore",
    "pagemap",
    "pagemap_scan",
    "clone3_set_tid",
    "pidfd",
];

/// Whether every feature stasis cannot work without is there.
pub(crate) fn needed_features_ok(features: &[stasis_sys::features::Feature]) -> bool {
    features.iter().all(|f| f.ok || !NEEDED.contains(&f.name))
}

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
    for f in &features {
        println!(
            "{:<22} {:<4} {}",
            f.name,
            if f.ok { "yes" } else { "no" },
            f.note
        );
    }
    if !needed_features_ok(&features) {
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
