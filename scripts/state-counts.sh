#!/usr/bin/env bash
# Recomputes the status counts of docs/state.md and rewrites its table.
set -euo pipefail
cd "$(dirname "$0")/.."
f=docs/state.md
read -r saved refused ignored lost untested total < <(awk -F'|' '
  NF>=6 && $4 ~ /\*\*(saved|refused|ignored|LOST)\*\*/ {
    match($4, /\*\*(saved|refused|ignored|LOST)\*\*/); s=substr($4, RSTART+2, RLENGTH-4); n[s]++; t++
    if (s=="saved" && $5 ~ /^ no (dedicated )?test/) u++ }
  END { print n["saved"]+0, n["refused"]+0, n["ignored"]+0, n["LOST"]+0, u+0, t+0 }' "$f")
python3 - "$f" "$saved" "$refused" "$ignored" "$lost" "$untested" "$total" <<'PY'
import re, sys
f, saved, refused, ignored, lost, untested, total = sys.argv[1:]
s = open(f).read()
table = (f"| status | rows |\n|---|---|\n| saved | {saved} ({untested} of them without a test yet) |\n"
         f"| refused | {refused} |\n| ignored | {ignored} |\n| LOST | {lost} |\n| **total** | {total} |\n")
s = re.sub(r"\| status \| rows \|\n\|---\|---\|\n(?:\|.*\|\n)+", table, s, count=1)
open(f, "w").write(s)
PY
echo "saved $saved (untested $untested), refused $refused, ignored $ignored, LOST $lost, total $total"
