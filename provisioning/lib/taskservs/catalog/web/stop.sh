# Sourced by remove: stop_pidfile FILE WORD stops the process FILE names when its
# command line holds WORD (a reused pid is left alone), polling up to 10 s, then KILL.
stop_pidfile() {
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    if ps -p "$pid" -o args= 2>/dev/null | grep -q -- "$2"; then
        kill "$pid" 2>/dev/null || true
        n=0
        while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 100 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}
