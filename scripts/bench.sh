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
# A cluster over SSH with SLURM (about 4 minutes): brings up the test services (reusing running
# ones), builds the static binaries it uploads, and compares with submitit when it is installed
# (`pip install submitit`).
. scripts/services.sh
trap stop_services EXIT
need_slurm
need_sshd_lab
need_musl
cargo build --release --target x86_64-unknown-linux-musl --bin neromum --bin nerokid
cargo bench -p neronet --bench cluster
# Kids reporting over TCP (about 2 minutes): metric latency TCP vs file tailing on the same
# SLURM over SSH (the services and static binaries above), then neromum with 1,000 simulated
# kids reporting 10 lines/s each, `--listen auto` and `--listen off`.
cargo bench -p neronet --bench kid_reports
