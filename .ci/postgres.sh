# shellcheck shell=bash
# Sourced by .ci/run and bench/with_postgres.sh (bash): start_test_postgres and
# stop_test_postgres, a throwaway PostgreSQL server for the postgres backend's
# tests and benchmark. The caller defines log() and has made .venv.

start_test_postgres() {
    # A throwaway PostgreSQL server for the postgres backend's tests (DESIGN.md
    # 15): initdb in a fresh dir under /tmp, a free port on 127.0.0.1, its
    # socket in that dir; stopped by stop_test_postgres (trap in main). initdb
    # refuses root, so as root the server runs as the unprivileged user
    # "nobody", which owns the dir. Tests get PROVISIONING_TEST_PG_DSN and make
    # a database each. Without Debian's postgresql the postgres tests skip.
    local bindir="" d
    for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir=$d; done
    if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
       { [ "${CI:-}" = true ] || [ "${PROVISIONING_CI_TOOLS:-}" = 1 ]; }; then
        log "apt-get install postgresql"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends postgresql) >/dev/null 2>&1 ||
            log "could not install postgresql"
        for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir=$d; done
    fi
    if [ -z "$bindir" ]; then
        log "no PostgreSQL server found: the postgres backend tests will skip"
        return 0
    fi
    local port as=()
    PG_TEST_DIR=$(mktemp -d /tmp/provisioning-ci-pg.XXXXXX)
    port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if [ "$(id -u)" = 0 ]; then
        chown nobody "$PG_TEST_DIR"
        as=(runuser -u nobody --)
    fi
    PG_TEST_RUN=("${as[@]}")
    PG_TEST_BIN=$bindir
    log "starting PostgreSQL ($bindir) on 127.0.0.1:$port, data in $PG_TEST_DIR"
    "${as[@]}" "$bindir/initdb" -D "$PG_TEST_DIR/data" -U postgres --auth=trust \
        -E UTF8 --locale=C.UTF-8 >"$PG_TEST_DIR/initdb.log" 2>&1 ||
        { cat "$PG_TEST_DIR/initdb.log" >&2; log "initdb FAILED: the postgres tests will skip"
          stop_test_postgres; return 0; }
    "${as[@]}" "$bindir/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w -t 60 \
        -o "-p $port -k $PG_TEST_DIR -c listen_addresses=127.0.0.1 -c max_connections=200" \
        start >/dev/null ||
        { cat "$PG_TEST_DIR/server.log" >&2; log "PostgreSQL did not start: the postgres tests will skip"
          stop_test_postgres; return 0; }
    PROVISIONING_TEST_PG_DSN="host=127.0.0.1 port=$port user=postgres dbname=postgres"
    export PROVISIONING_TEST_PG_DSN
    # the database-restart test stops and starts the server: pg_ctl, its data
    # dir and the user it runs as (empty: this one)
    PROVISIONING_TEST_PG_CTL="$bindir/pg_ctl"
    PROVISIONING_TEST_PG_DATA="$PG_TEST_DIR/data"
    PROVISIONING_TEST_PG_USER=$([ "$(id -u)" = 0 ] && echo nobody || true)
    export PROVISIONING_TEST_PG_CTL PROVISIONING_TEST_PG_DATA PROVISIONING_TEST_PG_USER
}

stop_test_postgres() {
    [ -n "${PG_TEST_DIR:-}" ] || return 0
    "${PG_TEST_RUN[@]}" "$PG_TEST_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop \
        >/dev/null 2>&1 || true
    rm -rf "$PG_TEST_DIR"
    PG_TEST_DIR=
}
