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
cargo test --workspace
