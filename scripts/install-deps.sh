#!/usr/bin/env bash
# Installs the system packages jitgate's tests and demo drive (real PostgreSQL, psql, OpenSSH
# sshd/ssh/scp/sftp, rsync, sudo for the sudo grant, tmux for the interactive pty test).
# As root it installs what is missing with apt-get; otherwise it prints the one command to run.
set -euo pipefail

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

if [ ${#missing[@]} -eq 0 ]; then
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
# openssh-server may start (and enable) a system sshd; the tests start their own on free ports.
if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
    if command -v systemctl >/dev/null; then
        systemctl disable --now ssh.service >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null; then
        service ssh stop >/dev/null 2>&1 || true
    fi
fi
