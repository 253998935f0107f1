//! `/proc/PID/timers`: POSIX timers created with timer_create(2).

use crate::util::{dec_i32, dec_u32, hex_u64, key_value, lines, utf8};
use crate::ParseError;

/// One POSIX timer from `/proc/PID/timers`. The kernel prints
/// `ID: %d`, `signal: %d/%px`, `notify: %s/%s.%d`, `ClockID: %d`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TimerInfo {
    /// Timer ID as returned by timer_create(2).
    pub id: i32,
    /// `sigev_signo`.
    pub signal: i32,
    /// `sigev_value` (the pointer or integer passed to the handler).
    pub sigev_value: u64,
    /// Notification kind: `"signal"`, `"none"` or `"thread"`.
    pub notify: String,
    /// The target thread when the notification is `SIGEV_THREAD_ID`
    /// (`tid.N`); `None` when it targets the process (`pid.N`).
    pub notify_tid: Option<u32>,
    /// Clock: `CLOCK_*` or a negative CPU-time clock ID.
    pub clock_id: i32,
}

#[derive(Default)]
struct Partial {
    id: i32,
    signal: Option<(i32, u64)>,
    notify: Option<(String, Option<u32>)>,
    clock_id: Option<i32>,
}

impl Partial {
    fn finish(self) -> Result<TimerInfo, ParseError> {
        let missing = |k: &str| ParseError::new(format!("timer {}: missing {k}", self.id));
        let (signal, sigev_value) = self.signal.ok_or_else(|| missing("signal"))?;
        let (notify, notify_tid) = self.notify.ok_or_else(|| missing("notify"))?;
        let clock_id = self.clock_id.ok_or_else(|| missing("ClockID"))?;
        Ok(TimerInfo {
            id: self.id,
            signal,
            sigev_value,
            notify,
            notify_tid,
            clock_id,
        })
    }
}

fn parse_notify(v: &str) -> Result<(String, Option<u32>), ParseError> {
    let bad = || ParseError::new(format!("notify: bad value {v:?}"));
    let (kind, target) = v.split_once('/').ok_or_else(bad)?;
    let (who, id) = target.split_once('.').ok_or_else(bad)?;
    let id = dec_u32(id, "notify pid")?;
    let tid = match who {
        "tid" => Some(id),
        "pid" => None,
        _ => return Err(bad()),
    };
    Ok((kind.to_owned(), tid))
}

/// Parses `/proc/PID/timers`. Empty input gives an empty list; unknown keys
/// are ignored; each timer must have all four fields.
pub fn parse_timers(text: &[u8]) -> Result<Vec<TimerInfo>, ParseError> {
    let mut out = Vec::new();
    let mut cur: Option<Partial> = None;
    for (n, l) in lines(text) {
        let at = |e: ParseError| ParseError::new(format!("line {n}: {e}"));
        let line = utf8(l, "timers line").map_err(at)?;
        let Some((key, v)) = key_value(line) else {
            return Err(at(ParseError::new(format!("no ':' in {line:?}"))));
        };
        if key == "ID" {
            if let Some(p) = cur.take() {
                out.push(p.finish().map_err(at)?);
            }
            cur = Some(Partial {
                id: dec_i32(v, key).map_err(at)?,
                ..Partial::default()
            });
            continue;
        }
        let Some(p) = cur.as_mut() else {
            return Err(at(ParseError::new(format!("{key:?} before the first ID"))));
        };
        match key {
            "signal" => {
                let Some((sig, val)) = v.split_once('/') else {
                    return Err(at(ParseError::new(format!("signal: bad value {v:?}"))));
                };
                p.signal = Some((
                    dec_i32(sig, key).map_err(at)?,
                    hex_u64(val, "sigev_value").map_err(at)?,
                ));
            }
            "notify" => p.notify = Some(parse_notify(v).map_err(at)?),
            "ClockID" => p.clock_id = Some(dec_i32(v, key).map_err(at)?),
            _ => {}
        }
    }
    if let Some(p) = cur {
        out.push(p.finish()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured() {
        let v = parse_timers(include_bytes!("../tests/data/timers")).unwrap();
        assert_eq!(
            v,
            vec![
                TimerInfo {
                    id: 2,
                    signal: 14,
                    sigev_value: 0,
                    notify: "signal".into(),
                    notify_tid: None,
                    clock_id: -6
                },
                TimerInfo {
                    id: 1,
                    signal: 10,
                    sigev_value: 0x1234abcd,
                    notify: "signal".into(),
                    notify_tid: Some(3224),
                    clock_id: 0
                },
                TimerInfo {
                    id: 0,
                    signal: 34,
                    sigev_value: 0x1234abcd,
                    notify: "signal".into(),
                    notify_tid: None,
                    clock_id: 1
                },
            ]
        );
    }

    #[test]
    fn edge_cases() {
        assert_eq!(parse_timers(b""), Ok(vec![]));
        let v = parse_timers(
            b"ID: 5\nsignal: 0/ffffffffffffffff\nnotify: none/pid.0\nClockID: 7\nExtra: 1\n",
        )
        .unwrap();
        assert_eq!(v[0].sigev_value, u64::MAX);
        assert_eq!(
            (v[0].notify.as_str(), v[0].notify_tid, v[0].clock_id),
            ("none", None, 7)
        );
        for t in [
            &b"garbage"[..],
            b"signal: 1/0\n",
            b"ID: 1\nsignal: 1/0\nnotify: signal/pid.1\n",
            b"ID: 1\nsignal: 1/0\nnotify: signal/pid.1\nClockID: 0\nID: 2\n",
            b"ID: 1\nsignal: 1\nnotify: signal/pid.1\nClockID: 0\n",
            b"ID: 1\nsignal: 1/0\nnotify: signal/who.1\nClockID: 0\n",
            b"ID: 1\nsignal: 1/0\nnotify: signal\nClockID: 0\n",
            b"ID: x\n",
        ] {
            assert!(parse_timers(t).is_err(), "{}", String::from_utf8_lossy(t));
        }
    }
}
