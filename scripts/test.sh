#!/usr/bin/env bash
# Runs every test: unit tests, decoder fuzzing, and the end-to-end
# checkpoint/restore tests on real processes (root needed for those).
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests drive the real binaries: build them first.
cargo build --workspace --bins
# ... and libcriu.so, which crun loads (tests/containers.rs crun_*).
cargo build -p stasis-libcriu
cargo test --workspace "$@"
