//! `/proc/PID/stat`.

use crate::util::{dec_i32, dec_u32, dec_u64, err, utf8};
use crate::ParseError;

/// The fields of `/proc/PID/stat` that stasis uses (see proc_pid_stat(5)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stat {
    /// (1) Process (thread) ID.
    pub pid: u32,
    /// (2) Command name, without the parentheses; decoded lossily if not UTF-8.
    pub comm: String,
    /// (3) State: `R`, `S`, `D`, `T`, `t`, `Z`, `X`, `I`, ...
    pub state: char,
    /// (4) Parent PID.
    pub ppid: u32,
    /// (5) Process group ID.
    pub pgrp: u32,
    /// (6) Session ID.
    pub session: u32,
    /// (7) Controlling terminal (encoded device number), 0 if none.
    pub tty_nr: u32,
    /// (9) Kernel flags (`PF_*`).
    pub flags: u32,
    /// (19) Nice value, -20..=19.
    pub nice: i32,
    /// (20) Number of threads.
    pub num_threads: u32,
    /// (22) Start time after boot, in clock ticks.
    pub start_time: u64,
    /// (26) Start of the text segment.
    pub start_code: u64,
    /// (27) End of the text segment.
    pub end_code: u64,
    /// (28) Start (bottom) of the stack.
    pub start_stack: u64,
    /// (40) Real-time priority.
    pub rt_priority: u32,
    /// (41) Scheduling policy (`SCHED_*`).
    pub policy: u32,
    /// (45) Start of the data segment.
    pub start_data: u64,
    /// (46) End of the data segment.
    pub end_data: u64,
    /// (47) Start of the heap (`brk` grows from here).
    pub start_brk: u64,
    /// (48) Start of the command-line arguments.
    pub arg_start: u64,
    /// (49) End of the command-line arguments.
    pub arg_end: u64,
    /// (50) Start of the environment.
    pub env_start: u64,
    /// (51) End of the environment.
    pub env_end: u64,
    /// (38) Signal sent to the parent when the process dies.
    pub exit_signal: i32,
    /// (52) Exit status, as reported by waitpid.
    pub exit_code: i32,
}

/// Number of fields since Linux 3.5 (`exit_code` is field 52).
const FIELDS: usize = 52;

/// Parses `/proc/PID/stat`. The command name may contain spaces and
/// parentheses, so it runs from the first `'('` to the *last* `')'`.
/// All 52 fields (Linux >= 3.5) are required; extra trailing fields are ignored.
pub fn parse_stat(text: &[u8]) -> Result<Stat, ParseError> {
    let open = text
        .iter()
        .position(|&b| b == b'(')
        .ok_or_else(|| ParseError::new("stat: no '(' before comm"))?;
    let close = text
        .iter()
        .rposition(|&b| b == b')')
        .ok_or_else(|| ParseError::new("stat: no ')' after comm"))?;
    if close < open {
        return err("stat: ')' before '('");
    }
    let (head, rest) = text.split_at(open);
    let (comm, tail) = rest.split_at(close - open);
    let comm = String::from_utf8_lossy(comm.get(1..).unwrap_or_default()).into_owned();
    let tail = utf8(tail.get(1..).unwrap_or_default(), "stat")?;
    let pid = dec_u32(utf8(head, "stat pid")?.trim(), "stat pid")?;

    // f[i] is field number i + 3.
    let f: Vec<&str> = tail.split_whitespace().collect();
    if f.len() < FIELDS - 2 {
        return err(format!(
            "stat: {} fields after comm, expected {}",
            f.len(),
            FIELDS - 2
        ));
    }
    let field = |n: usize| f.get(n - 3).copied().unwrap_or_default();
    let name = |n: usize| format!("stat field {n}");
    let u32f = |n: usize| dec_u32(field(n), &name(n));
    let u64f = |n: usize| dec_u64(field(n), &name(n));
    let i32f = |n: usize| dec_i32(field(n), &name(n));

    let mut st = field(3).chars();
    let state = match (st.next(), st.next()) {
        (Some(c), None) => c,
        _ => return err(format!("stat: bad state {:?}", field(3))),
    };

    Ok(Stat {
        pid,
        comm,
        state,
        ppid: u32f(4)?,
        pgrp: u32f(5)?,
        session: u32f(6)?,
        tty_nr: u32f(7)?,
        flags: u32f(9)?,
        nice: i32f(19)?,
        num_threads: u32f(20)?,
        start_time: u64f(22)?,
        start_code: u64f(26)?,
        end_code: u64f(27)?,
        start_stack: u64f(28)?,
        exit_signal: i32f(38)?,
        rt_priority: u32f(40)?,
        policy: u32f(41)?,
        start_data: u64f(45)?,
        end_data: u64f(46)?,
        start_brk: u64f(47)?,
        arg_start: u64f(48)?,
        arg_end: u64f(49)?,
        env_start: u64f(50)?,
        env_end: u64f(51)?,
        exit_code: i32f(52)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = include_bytes!("../tests/data/stat");

    #[test]
    fn captured() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.pid, 3224);
        assert_eq!(s.comm, "we ird) (x");
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgrp, s.session, s.tty_nr), (1, 3210, 1999, 0));
        assert_eq!(s.flags, 4194304);
        assert_eq!((s.nice, s.num_threads), (0, 2));
        assert_eq!(s.start_time, 24618);
        assert_eq!(
            (s.start_code, s.end_code, s.start_stack),
            (93836120268800, 93836120270077, 140727091462912)
        );
        assert_eq!((s.exit_signal, s.rt_priority, s.policy), (17, 0, 0));
        assert_eq!(
            (s.start_data, s.end_data, s.start_brk),
            (93836120280528, 93836120281232, 93836543275008)
        );
        assert_eq!(
            (s.arg_start, s.arg_end, s.env_start, s.env_end),
            (
                140727091464741,
                140727091464760,
                140727091464760,
                140727091466226
            )
        );
        assert_eq!(s.exit_code, 0);
    }

    fn with_comm(comm: &[u8]) -> Vec<u8> {
        let mut v = b"42 (".to_vec();
        v.extend_from_slice(comm);
        v.extend_from_slice(b") R 1 42 42 34816 -1 4194560");
        for i in 10..=52 {
            v.extend_from_slice(format!(" {}", if i == 19 { -5 } else { 7 }).as_bytes());
        }
        v.push(b'\n');
        v
    }

    #[test]
    fn odd_comm() {
        let s = parse_stat(&with_comm(b") (")).unwrap();
        assert_eq!(s.comm, ") (");
        assert_eq!(
            (s.pid, s.state, s.ppid, s.tty_nr, s.nice),
            (42, 'R', 1, 34816, -5)
        );
        assert_eq!(parse_stat(&with_comm(b"")).unwrap().comm, "");
        assert_eq!(
            parse_stat(&with_comm(b"a b)) R 1")).unwrap().comm,
            "a b)) R 1"
        );
        assert_eq!(parse_stat(&with_comm(b"\xff")).unwrap().comm, "\u{fffd}");
    }

    #[test]
    fn bad() {
        assert!(parse_stat(b"").is_err());
        assert!(parse_stat(b"garbage").is_err());
        assert!(parse_stat(b")(").is_err());
        assert!(parse_stat(b"1 (x) S 1 2 3").is_err());
        let mut t = with_comm(b"x");
        t.truncate(t.len() - 3);
        assert!(parse_stat(&t).is_err());
        let t = String::from_utf8(with_comm(b"x")).unwrap();
        assert!(parse_stat(t.replace(" R ", " RR ").as_bytes()).is_err());
        assert!(parse_stat(t.replace("42 (", "-42 (").as_bytes()).is_err());
    }
}
