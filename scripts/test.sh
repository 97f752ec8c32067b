#!/usr/bin/env bash
# The test command: installs what the tests drive, then runs every test against real
# PostgreSQL and psql started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --locked "$@"
