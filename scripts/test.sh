#!/usr/bin/env bash
# The full test run: installs the services the tests need, builds every binary, runs every test.
# This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
trap stop_services EXIT

need_python3
need_libreoffice
need_uno
need_smtp
need_tmpfs
need_slurm
need_sge
need_sshd_lab
need_login2
need_musl

echo "== build (dev profile)"
cargo build --workspace --bins --tests
# What neroman uploads to a cluster: static, so it runs on any login node's libc.
echo "== static cluster binaries (release, x86_64-unknown-linux-musl)"
started=$SECONDS
cargo build --release --target x86_64-unknown-linux-musl --bin neromum --bin nerokid
echo "static build: $((SECONDS - started)) s"
echo "== tests"
log=$(mktemp)
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The same end-to-end suites again over the remote transport: neroman talks to each agent
# through a `neromum bridge` child (stdin/stdout, started by `sh -c` as ssh would), not the socket.
echo "== tests over neromum bridge (NERONET_TRANSPORT=bridge)"
NERONET_TRANSPORT=bridge cargo test --no-fail-fast --test local_runs --test agent_faults 2>&1 | tee -a "$log"
bridge_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$bridge_status
set -e
# One closing line for the whole run (cargo prints one summary per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
