//! `/proc/PID/status`.

use crate::util::{dec_u32, err, hex_u64, key_value, lines, oct_u32, utf8};
use crate::ParseError;

/// The fields of `/proc/PID/status` that stasis uses (see proc_pid_status(5)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Status {
    /// `Name:` the command name, unescaped (`\n` and `\\`), lossily decoded if not UTF-8.
    pub name: String,
    /// `Umask:` (Linux >= 4.7).
    pub umask: Option<u32>,
    /// `State:` the state letter (`S` of `S (sleeping)`).
    pub state: char,
    /// `Tgid:` thread group (process) ID.
    pub tgid: u32,
    /// `Pid:` thread ID.
    pub pid: u32,
    /// `PPid:` parent PID.
    pub ppid: u32,
    /// `TracerPid:` PID of the tracer, 0 if not traced.
    pub tracer_pid: u32,
    /// `Uid:` real, effective, saved, filesystem.
    pub uids: [u32; 4],
    /// `Gid:` real, effective, saved, filesystem.
    pub gids: [u32; 4],
    /// `Groups:` supplementary groups.
    pub groups: Vec<u32>,
    /// `NStgid:` TGID in each PID namespace, outermost first (empty if absent).
    pub ns_tgid: Vec<u32>,
    /// `NSpid:` TID in each PID namespace, outermost first (empty if absent).
    pub ns_pid: Vec<u32>,
    /// `NSpgid:` process group in each PID namespace (empty if absent).
    pub ns_pgid: Vec<u32>,
    /// `NSsid:` session in each PID namespace (empty if absent).
    pub ns_sid: Vec<u32>,
    /// `Threads:` number of threads.
    pub threads: u32,
    /// `SigPnd:` signals pending for the thread.
    pub sig_pnd: u64,
    /// `ShdPnd:` signals pending for the process.
    pub shd_pnd: u64,
    /// `SigBlk:` blocked signals.
    pub sig_blk: u64,
    /// `SigIgn:` ignored signals.
    pub sig_ign: u64,
    /// `SigCgt:` caught signals.
    pub sig_cgt: u64,
    /// `CapInh:` inheritable capabilities.
    pub cap_inh: u64,
    /// `CapPrm:` permitted capabilities.
    pub cap_prm: u64,
    /// `CapEff:` effective capabilities.
    pub cap_eff: u64,
    /// `CapBnd:` bounding set.
    pub cap_bnd: u64,
    /// `CapAmb:` ambient capabilities (0 if absent, Linux < 4.3).
    pub cap_amb: u64,
    /// `NoNewPrivs:` (false if absent, Linux < 4.10).
    pub no_new_privs: bool,
    /// `Seccomp:` 0 disabled, 1 strict, 2 filter (0 if absent).
    pub seccomp: u32,
    /// `untag_mask:` the address bits kept by linear address masking (all
    /// ones unless the process enabled LAM; all ones if absent).
    pub untag_mask: u64,
    /// `x86_Thread_features:` x86 per-thread features enabled through
    /// arch_prctl (shadow stack: `shstk`, `wrss`); empty if absent.
    pub x86_thread_features: String,
}

/// Undoes the kernel's escaping of the `Name:` value (`\n`, `\\`, ...).
fn unescape_name(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut it = b.iter().copied();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'f') => out.push(0x0c),
            Some(b'v') => out.push(0x0b),
            Some(b'a') => out.push(0x07),
            Some(b'e') => out.push(0x1b),
            Some(b'\\') => out.push(b'\\'),
            Some(b'"') => out.push(b'"'),
            Some(o) => out.extend_from_slice(&[b'\\', o]),
            None => out.push(b'\\'),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn list(v: &str, key: &str) -> Result<Vec<u32>, ParseError> {
    v.split_whitespace().map(|x| dec_u32(x, key)).collect()
}

fn ids4(v: &str, key: &str) -> Result<[u32; 4], ParseError> {
    let l = list(v, key)?;
    <[u32; 4]>::try_from(l)
        .map_err(|l| ParseError::new(format!("{key}: {} ids, expected 4", l.len())))
}

/// Parses `/proc/PID/status`. `Name`, `State`, `Tgid`, `Pid`, `PPid`,
/// `TracerPid`, `Uid`, `Gid`, `Threads`, the five signal masks and `CapInh`,
/// `CapPrm`, `CapEff`, `CapBnd` are required; other fields default when
/// absent (see [`Status`]); unknown keys are ignored.
pub fn parse_status(text: &[u8]) -> Result<Status, ParseError> {
    let mut name = None;
    let mut umask = None;
    let mut state = None;
    let (mut tgid, mut pid, mut ppid, mut tracer_pid, mut threads) = (None, None, None, None, None);
    let (mut uids, mut gids) = (None, None);
    let mut groups = Vec::new();
    let (mut ns_tgid, mut ns_pid, mut ns_pgid, mut ns_sid) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sig = [None; 5];
    let mut cap = [None; 4];
    let mut cap_amb = 0;
    let mut no_new_privs = false;
    let mut seccomp = 0;
    let mut untag_mask = u64::MAX;
    let mut x86_thread_features = String::new();

    for (n, l) in lines(text) {
        let at = |e: ParseError| ParseError::new(format!("line {n}: {e}"));
        if let Some(v) = l.strip_prefix(b"Name:") {
            let v = v.strip_prefix(b"\t").unwrap_or(v);
            name = Some(unescape_name(v));
            continue;
        }
        let line = utf8(l, "status line").map_err(at)?;
        let Some((key, v)) = key_value(line) else {
            return Err(at(ParseError::new(format!("no ':' in {line:?}"))));
        };
        let r: Result<(), ParseError> = (|| {
            match key {
                "Umask" => umask = Some(oct_u32(v, key)?),
                "State" => {
                    state = Some(
                        v.chars()
                            .next()
                            .ok_or_else(|| ParseError::new("State: empty"))?,
                    )
                }
                "Tgid" => tgid = Some(dec_u32(v, key)?),
                "Pid" => pid = Some(dec_u32(v, key)?),
                "PPid" => ppid = Some(dec_u32(v, key)?),
                "TracerPid" => tracer_pid = Some(dec_u32(v, key)?),
                "Threads" => threads = Some(dec_u32(v, key)?),
                "Uid" => uids = Some(ids4(v, key)?),
                "Gid" => gids = Some(ids4(v, key)?),
                "Groups" => groups = list(v, key)?,
                "NStgid" => ns_tgid = list(v, key)?,
                "NSpid" => ns_pid = list(v, key)?,
                "NSpgid" => ns_pgid = list(v, key)?,
                "NSsid" => ns_sid = list(v, key)?,
                "SigPnd" => sig[0] = Some(hex_u64(v, key)?),
                "ShdPnd" => sig[1] = Some(hex_u64(v, key)?),
                "SigBlk" => sig[2] = Some(hex_u64(v, key)?),
                "SigIgn" => sig[3] = Some(hex_u64(v, key)?),
                "SigCgt" => sig[4] = Some(hex_u64(v, key)?),
                "CapInh" => cap[0] = Some(hex_u64(v, key)?),
                "CapPrm" => cap[1] = Some(hex_u64(v, key)?),
                "CapEff" => cap[2] = Some(hex_u64(v, key)?),
                "CapBnd" => cap[3] = Some(hex_u64(v, key)?),
                "CapAmb" => cap_amb = hex_u64(v, key)?,
                "NoNewPrivs" => {
                    no_new_privs = match v {
                        "0" => false,
                        "1" => true,
                        _ => return err(format!("NoNewPrivs: bad value {v:?}")),
                    }
                }
                "Seccomp" => seccomp = dec_u32(v, key)?,
                "untag_mask" => {
                    let h = v.strip_prefix("0x").unwrap_or(v);
                    untag_mask = hex_u64(h, key)?
                }
                "x86_Thread_features" => x86_thread_features = v.trim().to_string(),
                _ => {}
            }
            Ok(())
        })();
        r.map_err(at)?;
    }

    fn req<T>(v: Option<T>, key: &str) -> Result<T, ParseError> {
        v.ok_or_else(|| ParseError::new(format!("status: missing {key}")))
    }
    Ok(Status {
        name: req(name, "Name")?,
        umask,
        state: req(state, "State")?,
        tgid: req(tgid, "Tgid")?,
        pid: req(pid, "Pid")?,
        ppid: req(ppid, "PPid")?,
        tracer_pid: req(tracer_pid, "TracerPid")?,
        uids: req(uids, "Uid")?,
        gids: req(gids, "Gid")?,
        groups,
        ns_tgid,
        ns_pid,
        ns_pgid,
        ns_sid,
        threads: req(threads, "Threads")?,
        sig_pnd: req(sig[0], "SigPnd")?,
        shd_pnd: req(sig[1], "ShdPnd")?,
        sig_blk: req(sig[2], "SigBlk")?,
        sig_ign: req(sig[3], "SigIgn")?,
        sig_cgt: req(sig[4], "SigCgt")?,
        cap_inh: req(cap[0], "CapInh")?,
        cap_prm: req(cap[1], "CapPrm")?,
        cap_eff: req(cap[2], "CapEff")?,
        cap_bnd: req(cap[3], "CapBnd")?,
        cap_amb,
        no_new_privs,
        seccomp,
        untag_mask,
        x86_thread_features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &[u8] = include_bytes!("../tests/data/status");

    #[test]
    fn captured() {
        let s = parse_status(STATUS).unwrap();
        assert_eq!(s.name, "we ird) (x");
        assert_eq!(s.umask, Some(0o022));
        assert_eq!(s.state, 'S');
        assert_eq!((s.tgid, s.pid, s.ppid, s.tracer_pid), (3224, 3224, 1, 0));
        assert_eq!((s.uids, s.gids), ([0; 4], [0; 4]));
        assert_eq!(s.groups, Vec::<u32>::new());
        assert_eq!(
            (s.ns_tgid, s.ns_pid, s.ns_pgid, s.ns_sid),
            (vec![3224], vec![3224], vec![3210], vec![1999])
        );
        assert_eq!(s.threads, 2);
        assert_eq!((s.sig_pnd, s.shd_pnd, s.sig_blk), (0, 0, 0));
        assert_eq!((s.sig_ign, s.sig_cgt), (6, 0x1_0000_0000));
        assert_eq!((s.cap_inh, s.cap_amb), (0, 0));
        assert_eq!(
            (s.cap_prm, s.cap_eff, s.cap_bnd),
            (0x1fffeffffff, 0x1fffeffffff, 0x1fffeffffff)
        );
        assert!(!s.no_new_privs);
        assert_eq!(s.seccomp, 0);
    }

    fn replace(from: &str, to: &str) -> Vec<u8> {
        let t = std::str::from_utf8(STATUS).unwrap();
        assert!(t.contains(from));
        t.replacen(from, to, 1).into_bytes()
    }

    #[test]
    fn edits() {
        let s = parse_status(&replace("Name:\twe ird) (x", "Name:\ta\\nb\\\\c ")).unwrap();
        assert_eq!(s.name, "a\nb\\c ");
        let s = parse_status(&replace("Groups:\t ", "Groups:\t4 24 27 ")).unwrap();
        assert_eq!(s.groups, vec![4, 24, 27]);
        let s = parse_status(&replace("NSpid:\t3224", "NSpid:\t3224\t1")).unwrap();
        assert_eq!(s.ns_pid, vec![3224, 1]);
        let s = parse_status(&replace(
            "NoNewPrivs:\t0\nSeccomp:\t0",
            "NoNewPrivs:\t1\nSeccomp:\t2",
        ))
        .unwrap();
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, 2);
        let s = parse_status(&replace("Umask:\t0022\n", "")).unwrap();
        assert_eq!(s.umask, None);

        assert!(parse_status(&replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0")).is_err());
        assert!(parse_status(&replace("CapEff:\t", "CapEff:\tx")).is_err());
        assert!(parse_status(&replace("Tgid:", "Tgidx:")).is_err());
        assert!(parse_status(&replace("NoNewPrivs:\t0", "NoNewPrivs:\t3")).is_err());
        assert!(parse_status(&replace("State:\tS (sleeping)", "State:")).is_err());
    }

    #[test]
    fn bad() {
        assert!(parse_status(b"").is_err());
        assert!(parse_status(b"garbage").is_err());
        assert!(parse_status(b"Name:\tx\n").is_err());
    }
}
