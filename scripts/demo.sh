#!/usr/bin/env bash
# A real checkpoint and restore of a live process, start to finish:
# start a counter, checkpoint it, kill it, restore it, watch it carry on.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p stasis -p stasis-tests
bin=target/release
work=$(mktemp -d /tmp/stasis-demo.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "== starting a counter (it prints a line every 0.5 s to $work/counter.log)"
# Its own session, no terminal, no inherited descriptors: a daemon-like job.
setsid "$bin/demo_counter" </dev/null >"$work/counter.log" 2>&1 &
pid=$!
sleep 3
tail -n 3 "$work/counter.log"

echo "== stasis dump -t $pid -D $work/img   (checkpoint, then the process is killed)"
"$bin/stasis" dump -t "$pid" -D "$work/img" -o dump.log -v4
sleep 1.5   # let init reap the killed process and free its PID
if kill -0 "$pid" 2>/dev/null; then echo "process still exists?"; exit 1; fi
echo "   process $pid is gone; image:"
ls -l "$work/img" | sed 's/^/   /'
echo "   (log after the kill: $(tail -n 1 "$work/counter.log"))"
sleep 2

echo "== stasis restore -D $work/img -d   (same PID, same memory, carries on)"
"$bin/stasis" restore -D "$work/img" -o restore.log -v4 -d --pidfile "$work/pidfile"
echo "   restored pid: $(cat "$work/pidfile")"
sleep 3
tail -n 6 "$work/counter.log"
grep -q "^pid $pid tick" <(tail -n 1 "$work/counter.log") && echo "== it carries on as pid $pid: checkpoint/restore worked"
