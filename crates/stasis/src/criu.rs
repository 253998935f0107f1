//! criu's command line: every option of every criu command, parsed the way
//! criu parses it (GNU getopt_long: options and the command in any order,
//! `--opt=VALUE` or `--opt VALUE`, unambiguous prefixes of long names,
//! clustered short options, `-vN`, `--no-NAME` for criu's boolean options).
//!
//! Each option has one fate here: *applied* (stasis does what criu does),
//! *accepted* (it only permits something stasis refuses by name anyway, or
//! has no effect on this command: a note goes to the log), or *refused*
//! (one line naming it, before anything is done). The table is written
//! from criu's documentation (`criu(8)`) and its option list; criu 4.1 is
//! the version stasis answers for.

use std::fmt::Write as _;

/// The criu version stasis answers for (`--version`, README).
pub const CRIU_VERSION: &str = "4.1";

/// Whether an option takes an argument (getopt's three kinds).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arg {
    No,
    Required,
    Optional,
}

/// What stasis does with an option.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fate {
    /// Implemented as criu implements it.
    Applied,
    /// Parsed and allowed; the note (logged) says why it changes nothing.
    Accepted(&'static str),
    /// Refused by name: stasis does not implement what it asks for.
    Refused,
    /// Decided by its value (see `judge_value`).
    ByValue,
}

/// Commands an option concerns (outside them criu ignores it, and so do we).
pub const DUMP: u8 = 1;
pub const PRE_DUMP: u8 = 2;
pub const RESTORE: u8 = 4;
pub const CHECK: u8 = 8;
/// page-server, lazy-pages, service, swrk, dedup, cpuinfo, exec.
pub const OTHER: u8 = 16;
pub const ANY: u8 = 31;
const DR: u8 = DUMP | PRE_DUMP | RESTORE;
const D: u8 = DUMP | PRE_DUMP;

/// One criu option.
#[derive(Debug)]
pub struct Opt {
    pub long: &'static str,
    pub short: Option<char>,
    pub arg: Arg,
    /// criu's boolean options also exist as `--no-NAME`.
    pub negatable: bool,
    pub scope: u8,
    pub fate: Fate,
    /// A valid argument (tests build command lines from it).
    pub example: &'static str,
}

const fn o(long: &'static str, arg: Arg, scope: u8, fate: Fate, example: &'static str) -> Opt {
    Opt {
        long,
        short: None,
        arg,
        negatable: false,
        scope,
        fate,
        example,
    }
}

const fn s(
    long: &'static str,
    short: char,
    arg: Arg,
    scope: u8,
    fate: Fate,
    example: &'static str,
) -> Opt {
    Opt {
        long,
        short: Some(short),
        arg,
        negatable: false,
        scope,
        fate,
        example,
    }
}

impl Opt {
    /// Also `--no-NAME` (criu's boolean options).
    const fn neg(mut self) -> Opt {
        self.negatable = true;
        self
    }
}

/// A boolean option with its `--no-` form.
const fn b(long: &'static str, scope: u8, fate: Fate) -> Opt {
    Opt {
        long,
        short: None,
        arg: Arg::No,
        negatable: true,
        scope,
        fate,
        example: "",
    }
}

use Arg::{No, Optional as Opti, Required as Req};
use Fate::{Accepted as Acc, Applied as App, ByValue, Refused as Ref};

const ONE_MOUNT_ENGINE: &str =
    "stasis rebuilds a mount namespace with the new mount API only: nothing to choose";
const NO_INCREMENTAL: &str =
    "stasis does not deduplicate after a dump: each image keeps its own pages, a restore resolves the chain, and `stasis dedup -D DIR` merges it on request";

/// Every option of criu 4.1, by long name.
pub static OPTIONS: &[Opt] = &[
    // Common options.
    s("verbosity", 'v', Opti, ANY, App, "4"),
    s("log-file", 'o', Req, ANY, App, "criu.log"),
    o("config", Req, ANY, ByValue, "/nonexistent/criu.conf"),
    o("no-default-config", No, ANY, App, ""),
    o("pidfile", Req, RESTORE | OTHER, App, "stasis.pid"),
    s("images-dir", 'D', Req, ANY, App, "."),
    s("work-dir", 'W', Req, ANY, App, "."),
    s("libdir", 'L', Req, ANY, Acc("stasis has no plugins to load"), "/nonexistent"),
    b("display-stats", DR, Acc("the log file has the figures of every dump and restore")),
    b("log-pid", ANY, Acc("stasis logs from one process into one file")),
    o("close", Req, ANY, App, "99"),
    s("help", 'h', No, ANY, App, ""),
    s("version", 'V', No, ANY, App, ""),
    b(
        "unprivileged",
        ANY,
        Acc("stasis uses the capabilities it has and refuses by name whatever needs more"),
    ),
    // Dump and pre-dump.
    s("tree", 't', Req, D, App, "99999998"),
    s("leave-running", 'R', No, D, App, ""),
    s("leave-stopped", 's', No, D, Ref, ""),
    o("timeout", Req, DR, App, "30"),
    o("freeze-cgroup", Req, D, App, "/sys/fs/cgroup/x"),
    s("ext-unix-sk", 'x', Opti, DR, ByValue, ""),
    b("tcp-established", DR, App),
    b("skip-in-flight", DR, App),
    b("tcp-close", DR, App),
    b(
        "link-remap",
        DR,
        Acc("stasis saves the contents of every deleted open file (criu's ghost files)"),
    ),
    o("ghost-limit", Req, D, App, "1M"),
    b(
        "ghost-fiemap",
        D,
        Acc("only how criu reads sparse deleted files; the saved contents are the same"),
    ),
    o("network-lock", Req, DR, ByValue, "iptables"),
    o("prev-images-dir", Req, D, App, "../parent"),
    b("track-mem", D, App),
    b("auto-dedup", ANY, Acc(NO_INCREMENTAL)),
    b("page-server", D | OTHER, App),
    o("address", Req, D | OTHER, App, "127.0.0.1"),
    o("port", Req, D | OTHER, App, "27"),
    o("ps-socket", Req, D | OTHER, Ref, "3"),
    // The page server's TLS (dump, page-server, lazy-pages, migrate); a
    // restore connects to no page server: nothing to secure there.
    b("tls", D | RESTORE | OTHER, App),
    o("tls-cacert", Req, D | RESTORE | OTHER, App, "ca.pem"),
    o("tls-cacrl", Req, D | RESTORE | OTHER, App, "crl.pem"),
    o("tls-cert", Req, D | RESTORE | OTHER, App, "cert.pem"),
    o("tls-key", Req, D | RESTORE | OTHER, App, "key.pem"),
    o("tls-no-cn-verify", No, D | RESTORE | OTHER, App, ""),
    o("pre-dump-mode", Req, D, ByValue, "splice"),
    b("check-only", D, Ref),
    b("stream", DR, Ref),
    b("allow-uprobes", D, Ref),
    o("ms", No, DR, Ref, ""),
    // Dump and restore.
    s("shell-job", 'j', No, DR, App, "").neg(),
    s("file-locks", 'l', No, DR, App, "").neg(),
    o("manage-cgroups", Opti, DR, ByValue, "ignore"),
    o("cgroup-root", Req, RESTORE, App, "/x"),
    o("cgroup-props", Req, DR, Ref, "x"),
    o("cgroup-props-file", Req, DR, Ref, "x.yaml"),
    o("cgroup-dump-controller", Req, D, Ref, "cpu"),
    o("cgroup-yard", Req, DR, Ref, "/x"),
    o("external", Req, DR, ByValue, "veth[eth0]:veth9"),
    s("ext-mount-map", 'M', Req, DR, ByValue, "auto"),
    o("enable-external-sharing", No, DR, Ref, ""),
    o("enable-external-masters", No, DR, Ref, ""),
    o("skip-mnt", Req, D, Ref, "/mnt"),
    o("enable-fs", Req, D, Ref, "nfs"),
    b("mntns-compat-mode", RESTORE, Acc(ONE_MOUNT_ENGINE)),
    b(
        "evasive-devices",
        DR,
        Acc("only stateless devices (/dev/null, zero, full, random, urandom) are restored; any other is refused by name"),
    ),
    b(
        "force-irmap",
        D,
        Acc("inotify watches are restored through file handles, not paths"),
    ),
    o(
        "irmap-scan-path",
        Req,
        D,
        Acc("inotify watches are restored through file handles, not paths"),
        "/",
    ),
    // runc sends empty_ns=net on every checkpoint (it manages no network
    // device). criu would leave the namespace empty for the caller to
    // fill; stasis restores it in full (links other than lo and veth are
    // refused by name): a departure, documented in the README.
    o(
        "empty-ns",
        Req,
        DR,
        Acc("stasis saves and restores the tree's network namespace in full (what it cannot restore is refused by name), where criu would leave it empty for the caller to set up"),
        "net",
    ),
    b(
        "weak-sysctls",
        RESTORE,
        Acc("stasis restores no namespace, so no sysctl"),
    ),
    o("file-validation", Req, DR, ByValue, "filesize"),
    b(
        "skip-file-rwx-check",
        RESTORE,
        Acc("stasis makes no such check: files are opened as the restorer"),
    ),
    o("lsm-profile", Req, RESTORE, Ref, "apparmor:x"),
    o("lsm-mount-context", Req, RESTORE, Ref, "x"),
    o("action-script", Req, DR, App, "/bin/true"),
    b("deprecated", ANY, Acc("stasis supports nothing criu deprecated")),
    // Restore.
    s("restore-detached", 'd', No, RESTORE, App, "").neg(),
    b("daemon", RESTORE, App),
    s("restore-sibling", 'S', No, RESTORE, App, "").neg(),
    s("root", 'r', Req, RESTORE, App, "/"),
    s("join-ns", 'J', Req, RESTORE, ByValue, "net:/proc/1/ns/net"),
    o("veth-pair", Req, RESTORE, ByValue, "eth0=veth0"),
    o("inherit-fd", Req, RESTORE, App, "fd[3]:x"),
    o("exec-cmd", No, RESTORE, Ref, ""),
    o("cpu-cap", Opti, RESTORE | OTHER, ByValue, "fpu"),
    o("lazy-pages", No, DR, App, ""),
    o("status-fd", Req, OTHER, App, "3"),
    // Check.
    o("feature", Req, CHECK, App, "clone3_set_tid"),
    b("extra", CHECK, App),
    b("experimental", CHECK, App),
    o("all", No, CHECK, App, ""),
    // stasis's own (not criu's).
    o("allow-changed-files", No, RESTORE, App, ""),
    o("new-pid-ns", No, RESTORE, App, ""),
    // Page-file compression (zstd) and single-stream images on a pipe:
    // criu has neither (its `--stream` is an image-streamer socket).
    o("compress", Opti, D, App, "zstd:3"),
    o("to-stdout", No, D, App, ""),
    o("from-stdin", No, RESTORE, App, ""),
    // `stasis migrate`: most pre-copy rounds before the final dump.
    o("max-rounds", Req, OTHER, App, "8"),
];

/// criu's commands, and whether stasis implements each.
pub static COMMANDS: &[(&str, u8, bool)] = &[
    ("dump", DUMP, true),
    ("pre-dump", PRE_DUMP, true),
    ("restore", RESTORE, true),
    ("check", CHECK, true),
    ("page-server", OTHER, true),
    ("lazy-pages", OTHER, true),
    ("service", OTHER, true),
    ("swrk", OTHER, true),
    ("dedup", OTHER, true),
    ("cpuinfo", OTHER, true),
    ("exec", OTHER, false),
    // stasis's own: pre-dump rounds, dump and restore in one command, so
    // every dump and restore option is judged for it.
    ("migrate", DUMP | PRE_DUMP | RESTORE | OTHER, true),
];

/// One option as given on the command line.
#[derive(Debug, Clone)]
pub struct Given {
    pub opt: &'static Opt,
    /// `--no-NAME`.
    pub negated: bool,
    pub value: Option<String>,
}

impl Given {
    /// How the user would recognise it: `--name[=value]`.
    pub fn spelled(&self) -> String {
        let mut s = format!(
            "--{}{}",
            if self.negated { "no-" } else { "" },
            self.opt.long
        );
        if let Some(v) = &self.value {
            let _ = write!(s, "={v}");
        }
        s
    }
}

/// A parsed command line.
#[derive(Debug, Default)]
pub struct Parsed {
    pub given: Vec<Given>,
    pub positionals: Vec<String>,
}

fn by_long(name: &str) -> Result<(&'static Opt, bool), String> {
    let candidates = || {
        OPTIONS.iter().flat_map(|o| {
            let mut v = vec![(o.long.to_string(), o, false)];
            if o.negatable {
                v.push((format!("no-{}", o.long), o, true));
            }
            v
        })
    };
    if let Some((_, o, neg)) = candidates().find(|(n, _, _)| n == name) {
        return Ok((o, neg));
    }
    let matches: Vec<_> = candidates()
        .filter(|(n, _, _)| n.starts_with(name))
        .collect();
    match matches.as_slice() {
        [(_, o, neg)] => Ok((o, *neg)),
        [] => Err(format!("unrecognized option --{name}")),
        _ => Err(format!(
            "option --{name} is ambiguous ({})",
            matches
                .iter()
                .map(|(n, _, _)| format!("--{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Parses `args` (without argv[0]) as criu's getopt_long would.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.positionals.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let (opt, negated) = by_long(name)?;
            let value = match (opt.arg, negated, inline) {
                (Arg::No, _, Some(_)) | (_, true, Some(_)) => {
                    return Err(format!("option --{name} doesn't allow an argument"))
                }
                (Arg::Required, false, None) => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        Some(v.clone())
                    }
                    None => return Err(format!("option --{} requires an argument", opt.long)),
                },
                (_, _, v) => v,
            };
            p.given.push(Given {
                opt,
                negated,
                value,
            });
            continue;
        }
        let Some(cluster) = a.strip_prefix('-').filter(|c| !c.is_empty()) else {
            p.positionals.push(a.clone());
            continue;
        };
        let chars: Vec<char> = cluster.chars().collect();
        let mut k = 0;
        while k < chars.len() {
            let c = chars[k];
            k += 1;
            let opt = OPTIONS
                .iter()
                .find(|o| o.short == Some(c))
                .ok_or_else(|| format!("invalid option -- '{c}'"))?;
            let rest: String = chars[k..].iter().collect();
            let value = match opt.arg {
                Arg::No => None,
                Arg::Optional => {
                    k = chars.len();
                    (!rest.is_empty()).then_some(rest)
                }
                Arg::Required => {
                    k = chars.len();
                    if !rest.is_empty() {
                        Some(rest)
                    } else if let Some(v) = args.get(i) {
                        i += 1;
                        Some(v.clone())
                    } else {
                        return Err(format!("option requires an argument -- '{c}'"));
                    }
                }
            };
            p.given.push(Given {
                opt,
                negated: false,
                value,
            });
        }
    }
    Ok(p)
}

const AUTO_EXT_MOUNTS: &str = "stasis always finds external mounts itself: each is saved \
     with its host path as its key, and bound from there when its filesystem is still there";

/// One `--external RES` (criu's spellings), as judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum External {
    /// `veth[IN]:OUT[@BRIDGE]` (restore).
    Veth(stasis_restore::VethMap),
    /// `mnt[MOUNTPOINT]:KEY` at dump, `mnt[KEY]:PATH` at restore: the
    /// same pair as `--ext-mount-map`.
    Mount(String, String),
    /// `mnt[]` (criu's automatic external mounts, what stasis always does).
    AutoMounts,
    /// `unix[INO]` (dump): the unix socket of the tree with this inode may
    /// have its other end outside (criu's per-socket `--ext-unix-sk`).
    Unix(u64),
    /// `file[MNT_ID:INODE]` (dump, both in hex): the file is saved as
    /// external, handed back with `--inherit-fd fd[N]:file[MNT_ID:INODE]`.
    File(String),
    /// `dev[MAJOR/MINOR]:NAME` at dump, `dev[NAME]:DEVPATH` at restore:
    /// a mount of a block device, mounted anew from DEVPATH.
    Device(String, String),
    /// `macvlan[IN]:OUT` (restore): the lower device of macvlan IN.
    Macvlan(stasis_restore::MacvlanMap),
    /// A kind stasis does not do yet: the one-line reason.
    Unsupported(String),
}

impl External {
    pub fn parse(v: &str) -> Result<External, String> {
        let bad = || format!("{v} (criu's TYPE[ID]:VALUE)");
        let (kind, rest) = v.split_once('[').ok_or_else(bad)?;
        let (id, value) = match rest.split_once(']') {
            Some((id, "")) => (id, None),
            Some((id, val)) => (id, Some(val.strip_prefix(':').ok_or_else(bad)?)),
            None => return Err(bad()),
        };
        Ok(match (kind, id, value) {
            ("veth", ..) => External::Veth(veth_spec("external", v).ok_or_else(bad)?),
            ("mnt", "", None) => External::AutoMounts,
            ("mnt", "", Some(flags)) if flags.chars().all(|c| c == 'm' || c == 's') => {
                if flags.is_empty() {
                    External::AutoMounts
                } else {
                    External::Unsupported(format!(
                        "--external {v}: external mounts' sharing (s) and masters (m) are not \
                         restored yet (propagation across namespaces is refused at dump)"
                    ))
                }
            }
            ("mnt", "", Some(_)) => return Err(format!("{v}: mnt[] takes the flags m and s")),
            ("mnt", id, Some(val)) if !val.is_empty() => {
                External::Mount(id.to_string(), val.to_string())
            }
            ("unix", id, None) => {
                External::Unix(id.parse().map_err(|_| format!("{v}: unix[INODE]"))?)
            }
            ("dev", id, Some(val)) if !id.is_empty() && !val.is_empty() => {
                External::Device(id.to_string(), val.to_string())
            }
            ("dev", ..) => return Err(format!("{v}: dev[MAJOR/MINOR]:NAME or dev[NAME]:DEVPATH")),
            ("file", id, None) => match id.split_once(':') {
                Some((m, i))
                    if u64::from_str_radix(m, 16).is_ok() && u64::from_str_radix(i, 16).is_ok() =>
                {
                    // The key as the dump writes it: lower-case hex, no 0s in front.
                    let hex = |x: &str| format!("{:x}", u64::from_str_radix(x, 16).unwrap_or(0));
                    External::File(format!("file[{}:{}]", hex(m), hex(i)))
                }
                _ => return Err(format!("{v}: file[MNT_ID:INODE], both in hex")),
            },
            ("macvlan", ..) => External::Macvlan(macvlan_spec(v).ok_or_else(bad)?),
            ("tty" | "netdev" | "net" | "pid" | "ipc" | "uts" | "time", ..) => {
                External::Unsupported(format!(
                    "--external {v}: external {kind} resources are not supported yet"
                ))
            }
            _ => return Err(format!("{v}: unknown resource type {kind}")),
        })
    }
}

/// The fate of an option whose fate depends on its value; an invalid value
/// is an error, as in criu.
/// A veth's names: criu's `IN=OUT[@BRIDGE]` (`--veth-pair`) or
/// `veth[IN]:OUT[@BRIDGE]` (`--external`).
pub fn veth_spec(long: &str, v: &str) -> Option<stasis_restore::VethMap> {
    let (inner, rest) = match long {
        "veth-pair" => v.split_once('=')?,
        _ => v.strip_prefix("veth[")?.split_once("]:")?,
    };
    let (outer, bridge) = match rest.split_once('@') {
        Some((o, b)) => (o, Some(b.to_string())),
        None => (rest, None),
    };
    let name = |n: &str| !n.is_empty() && n.len() < 16 && !n.contains(['/', ' ']);
    (name(inner) && name(outer) && bridge.as_deref().is_none_or(name)).then(|| {
        stasis_restore::VethMap {
            inner: inner.into(),
            outer: outer.into(),
            bridge,
        }
    })
}

/// criu's `--external macvlan[IN]:OUT`.
pub fn macvlan_spec(v: &str) -> Option<stasis_restore::MacvlanMap> {
    let (inner, outer) = v.strip_prefix("macvlan[")?.split_once("]:")?;
    let name = |n: &str| !n.is_empty() && n.len() < 16 && !n.contains(['/', ' ', '@']);
    (name(inner) && name(outer)).then(|| stasis_restore::MacvlanMap {
        inner: inner.into(),
        outer: outer.into(),
    })
}

pub fn judge_value(g: &Given) -> Result<Fate, String> {
    let v = g.value.as_deref();
    let bad = || format!("invalid argument for --{}: {}", g.opt.long, v.unwrap_or(""));
    Ok(match g.opt.long {
        "veth-pair" => match v.and_then(|v| veth_spec("veth-pair", v)) {
            Some(_) => Fate::Applied,
            None => return Err(bad()),
        },
        "external" => match v.map(External::parse) {
            Some(Ok(
                External::Veth(_)
                | External::Mount(..)
                | External::Unix(_)
                | External::File(_)
                | External::Device(..)
                | External::Macvlan(_),
            )) => Fate::Applied,
            Some(Ok(External::AutoMounts)) => Fate::Accepted(AUTO_EXT_MOUNTS),
            Some(Ok(External::Unsupported(_))) => Fate::Refused,
            Some(Err(e)) => return Err(format!("invalid argument for --external: {e}")),
            None => return Err(bad()),
        },
        // criu's inode list: each inode as `--external unix[INO]` (and
        // the option itself on, as criu sets it).
        "ext-unix-sk" => match v {
            None => Fate::Applied,
            Some(l) if l.split(',').all(|i| i.trim().parse::<u64>().is_ok()) => Fate::Applied,
            Some(_) => return Err(bad()),
        },
        "join-ns" => match v {
            Some(x) if x.starts_with("net:") && x.len() > 4 => Fate::Applied,
            _ => Fate::Refused,
        },
        "manage-cgroups" => match v {
            None | Some("ignore" | "none" | "props" | "soft" | "full" | "strict") => Fate::Applied,
            Some(_) => return Err(bad()),
        },
        // runc names /etc/criu/runc.conf whether it exists or not; criu
        // reads nothing from a file that is not there, and nor do we.
        "config" => match v {
            Some(p) if !std::path::Path::new(p).exists() => {
                Fate::Accepted("no such file: criu reads nothing from it either")
            }
            Some(_) => Fate::Refused,
            None => return Err(bad()),
        },
        "network-lock" => match v {
            Some("iptables" | "nftables" | "skip") => Fate::Applied,
            _ => return Err(bad()),
        },
        "pre-dump-mode" => match v {
            Some("splice" | "read") => {
                Fate::Accepted("stasis's pre-dump reads pages with process_vm_readv either way")
            }
            _ => return Err(bad()),
        },
        // criu: KEY:PATH at restore (MOUNTPOINT:KEY at dump), or auto.
        "ext-mount-map" => match v {
            Some("auto") => Fate::Accepted(AUTO_EXT_MOUNTS),
            Some(m)
                if m.split_once(':')
                    .is_some_and(|(k, p)| !k.is_empty() && !p.is_empty()) =>
            {
                Fate::Applied
            }
            _ => return Err(bad()),
        },
        "file-validation" => match v {
            Some("filesize" | "buildid") => Fate::Accepted(
                "stasis checks the size and mtime of every file (stricter than either method)",
            ),
            _ => return Err(bad()),
        },
        "cpu-cap" => {
            let ok = v.is_none_or(|v| {
                v.split(',').all(|c| {
                    matches!(
                        c.trim_start_matches('^'),
                        "all" | "cpu" | "fpu" | "ins" | "none" | "default"
                    )
                })
            });
            if !ok {
                return Err(bad());
            }
            Fate::Accepted(
                "stasis checks every image's XSAVE layout against this CPU whatever the value",
            )
        }
        _ => g.opt.fate,
    })
}

/// The usage text.
pub fn usage(prog: &str) -> String {
    let mut u = format!(
        "Usage:\n  {prog} dump|pre-dump -t PID [<options>]\n  {prog} restore [<options>]\n  \
         {prog} check [--feature FEAT] [--extra|--experimental|--all]\n  \
         {prog} swrk FD | service [--address PATH] [-d] [--pidfile FILE]  (criu's RPC)\n  \
         {prog} page-server --port P [--address A] | lazy-pages [--page-server --address A --port P]\n  \
             (page server connections: [--tls [--tls-cacert F] [--tls-cacrl F] [--tls-cert F] [--tls-key F] [--tls-no-cn-verify]])\n  \
         {prog} cpuinfo dump|check [-D DIR] [--cpu-cap CAPS]\n  \
         {prog} dedup -D DIR (merges DIR's parent chain into it)\n  \
         {prog} exec (refused: not supported yet)\n  \
         stasis migrate -t PID [-D DIR] [--page-server --address A --port P] [--max-rounds N]\n  \
         stasis run [-d] [--pidfile FILE] -- CMD [ARGS...]\n  stasis show DIR|FILE\n  \
         stasis bench [...]\n  stasis install-criu-link [DIR]\n\n\
         criu {CRIU_VERSION}'s options (README, \"criu compatibility\"):\n"
    );
    for o in OPTIONS {
        let fate = match o.fate {
            Fate::Applied => "applied",
            Fate::Accepted(_) => "accepted",
            Fate::Refused => "refused",
            Fate::ByValue => "by value",
        };
        let short = o.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let arg = match o.arg {
            Arg::No => "",
            Arg::Required => " ARG",
            Arg::Optional => "[=ARG]",
        };
        let _ = writeln!(u, "  {short}--{}{arg}  ({fate})", o.long);
    }
    u
}

/// The table as tab-separated lines (for tests): long, short, arg, negatable,
/// scope, fate, example.
pub fn table() -> String {
    let mut t = String::new();
    for o in OPTIONS {
        let fate = match o.fate {
            Fate::Applied => "applied",
            Fate::Accepted(_) => "accepted",
            Fate::Refused => "refused",
            Fate::ByValue => "byvalue",
        };
        let arg = match o.arg {
            Arg::No => "no",
            Arg::Required => "required",
            Arg::Optional => "optional",
        };
        let _ = writeln!(
            t,
            "{}\t{}\t{arg}\t{}\t{}\t{fate}\t{}",
            o.long,
            o.short.map(String::from).unwrap_or_default(),
            o.negatable,
            o.scope,
            o.example
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Parsed, String> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn getopt_forms() {
        let r = p(&[
            "-v4",
            "dump",
            "-t",
            "5",
            "-D/x",
            "--log-file=d.log",
            "-Rj",
            "--tcp-est",
        ])
        .expect("parse");
        assert_eq!(r.positionals, ["dump"]);
        let names: Vec<_> = r.given.iter().map(|g| g.spelled()).collect();
        assert_eq!(
            names,
            [
                "--verbosity=4",
                "--tree=5",
                "--images-dir=/x",
                "--log-file=d.log",
                "--leave-running",
                "--shell-job",
                "--tcp-established"
            ]
        );
        let r = p(&["--no-shell-job", "--manage-cgroups", "x", "-vvv"]).expect("parse");
        assert!(r.given[0].negated);
        assert_eq!(r.given[1].value, None);
        assert_eq!(r.positionals, ["x"]);
        assert_eq!(r.given[2].value.as_deref(), Some("vv"));
        assert!(p(&["--pidfile"]).is_err());
        assert!(p(&["--nosuch"]).is_err());
        assert!(p(&["--tls-c"]).is_err(), "ambiguous");
        assert!(p(&["--leave-running=1"]).is_err());
        assert!(p(&["-q"]).is_err());
    }

    #[test]
    fn table_is_sane() {
        for (i, o) in OPTIONS.iter().enumerate() {
            assert!(
                !OPTIONS[i + 1..]
                    .iter()
                    .any(|x| x.long == o.long || (o.short.is_some() && x.short == o.short)),
                "{} twice",
                o.long
            );
            if o.arg == Arg::Required {
                assert!(!o.example.is_empty(), "{} needs an example", o.long);
            }
        }
    }
}
