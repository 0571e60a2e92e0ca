#!/bin/sh
# Quick start: provision the demo infra (examples/infra/demo) end to end
# through the orchestrator, on this machine, with no cloud account.
#
#   sh examples/quickstart.sh                 # create, show, curl, then tear down
#   sh examples/quickstart.sh --no-teardown   # leave it running to explore
#
# Everything lives inside the repo: the venv in .venv/, the data dir in
# .quickstart/data (PROVISIONING_STORAGE_DATA_DIR), and the orchestrator on a
# free port remembered in .quickstart/port, so it never collides with a
# system install on 9090.
set -eu

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

find_python() {
    for candidate in python3.12 python3.11 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

setup_venv() {
    if [ ! -x "$REPO/.venv/bin/python" ]; then
        py=$(find_python) || {
            echo "error: Python 3.10 or newer is needed on PATH (python3.12, python3.11, python3.10)" >&2
            exit 2
        }
        echo "==> creating .venv with $py"
        "$py" -m venv "$REPO/.venv"
    fi
    echo "==> installing provisioning into .venv"
    "$REPO/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO"
}

pick_port() {
    mkdir -p "$STATE"
    if [ -s "$STATE/port" ]; then
        cat "$STATE/port"
    else
        "$REPO/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' |
            tee "$STATE/port"
    fi
}

teardown() {
    status=$?
    trap - EXIT INT TERM
    echo "==> tearing down: cluster delete demo"
    "$P" --orchestrated cluster delete demo --infra "$INFRA" --wait || status=1
    echo "==> stopping the orchestrator this script started"
    "$P" orchestrator stop || true
    exit "$status"
}

main() {
    teardown_on=1
    for arg in "$@"; do
        case "$arg" in
            --teardown) teardown_on=1 ;;
            --no-teardown) teardown_on=0 ;;
            -h | --help) usage; exit 0 ;;
            *) echo "error: unknown option $arg" >&2; usage >&2; exit 2 ;;
        esac
    done

    REPO=$(cd "$(dirname "$0")/.." && pwd)
    STATE="$REPO/.quickstart"
    INFRA="$REPO/examples/infra/demo"
    P="$REPO/.venv/bin/provisioning"
    setup_venv

    port=$(pick_port)
    PROVISIONING_STORAGE_DATA_DIR="$STATE/data"
    PROVISIONING_SERVER_PORT="$port"
    PROVISIONING_ORCHESTRATOR_ENDPOINT="http://127.0.0.1:$port"
    export PROVISIONING_STORAGE_DATA_DIR PROVISIONING_SERVER_PORT PROVISIONING_ORCHESTRATOR_ENDPOINT

    if [ "$teardown_on" = 1 ]; then
        trap teardown EXIT
        trap 'exit 130' INT TERM
    fi

    echo "==> provisioning cluster demo through the orchestrator (auto-started on port $port)"
    "$P" --orchestrated cluster create demo --infra "$INFRA" --wait

    echo "==> provisioning server list"
    "$P" server list --infra "$INFRA"

    url=$("$P" --json server show web-1 --infra "$INFRA" | "$REPO/.venv/bin/python" -c '
import json, sys
view = json.load(sys.stdin)
port = next(t["ports"]["http"] for t in view["taskservs"] if t["name"] == "web")
print("http://" + view["address"] + ":" + str(port) + "/")')
    echo "==> the page served by web on web-1: $url"
    if command -v curl >/dev/null 2>&1; then
        curl -fsS "$url"
    else
        "$REPO/.venv/bin/python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$url"
    fi

    if [ "$teardown_on" = 0 ]; then
        echo "==> left running. Tear down with:"
        echo "    PROVISIONING_STORAGE_DATA_DIR=$STATE/data PROVISIONING_ORCHESTRATOR_ENDPOINT=http://127.0.0.1:$port \\"
        echo "      $P cluster delete demo --infra $INFRA --wait && $P orchestrator stop"
    fi
}

main "$@"
