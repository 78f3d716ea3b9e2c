#!/usr/bin/env bash
# Benchmarks (release build; figures go to docs/BENCHMARKS.md by hand). Prints figures only;
# nothing here is a pass/fail test. Run on a quiet machine and compare numbers from one run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The benches that run jobs need the release binaries beside them (neromum, nerokid).
cargo build --release --workspace --bins
cargo bench -p nerokid --bench kid
cargo bench -p neronet --bench workbooks
cargo bench -p neronet --bench latency
cargo bench -p neronet --bench agent
cargo bench -p neronet --bench writeback
# Drives the real `neroman watch` (the release binary built above); about 4 minutes (NERONET_BENCH_WATCH_ALL=1: 8).
cargo bench -p neronet --bench watch
