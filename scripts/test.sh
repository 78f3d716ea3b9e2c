#!/usr/bin/env bash
# The full test run: installs the services the tests need, builds every binary, runs every test.
# This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
trap stop_services EXIT

need_python3
need_libreoffice

echo "== build (dev profile)"
cargo build --workspace --bins --tests
echo "== tests"
log=$(mktemp)
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one summary per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
