#!/usr/bin/env bash
# The README's first command: installs what is missing (as root; otherwise prints the one apt
# command to run), builds jitgate, then runs `jitgate demo` in the foreground, in the current
# directory (the sandbox is ./jitgate-demo). Extra arguments go to `jitgate demo` (--dir,
# --pg-port, --ssh-port). Ctrl-C stops it and everything it started.
#
# As root the demo has both targets. Not as root it has PostgreSQL only: the SSH target needs
# root, since jitgate creates a Linux user on it for each connection. The demo says so when it
# starts.
set -euo pipefail
here=$PWD
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/install-deps.sh
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (1.89 or later) from https://rustup.rs, then run this again" >&2
    exit 1
fi
cargo build --release --locked
cd "$here"
exec "$repo/target/release/jitgate" demo "$@"
