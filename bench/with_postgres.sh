#!/usr/bin/env bash
# bench/with_postgres.sh [bench/run options]: the benchmark suite's figure 13
# (PostgreSQL backend, several daemons) against a throwaway PostgreSQL server,
# started and stopped the way .ci/run does it for the tests (.ci/postgres.sh:
# initdb under /tmp, a free port on 127.0.0.1, as `nobody` when root).
# Without an --only of its own: --only postgres (other options pass through). Needs Debian's postgresql and the postgres
# extra (`bash .ci/run` installs both); without them the rows say why.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# shellcheck source=.ci/postgres.sh
. .ci/postgres.sh
[ -x .venv/bin/python ] || { log "no .venv: run 'bash .ci/run' once first"; exit 1; }
trap stop_test_postgres EXIT
start_test_postgres
case " $* " in
    *" --only"*) ;;  # the caller chose the figures (add `postgres` to them)
    *) set -- --only postgres "$@" ;;
esac
set +e
bench/run "$@"
rc=$?
set -e
exit "$rc"
