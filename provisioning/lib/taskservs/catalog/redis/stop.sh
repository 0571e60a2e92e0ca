# Sourced by remove/install: stop_pidfile FILE WORD stops the process FILE names
# when its command line holds WORD (a reused pid is left alone): TERM, then
# polling up to 10 s for it to end, then KILL. The pid file is removed.
cmdline_of() {
    if [ -r "/proc/$1/cmdline" ]; then
        tr '\000' ' ' <"/proc/$1/cmdline"
    else
        ps -p "$1" -o args= 2>/dev/null
    fi
}

stop_pidfile() {
    [ -s "$1" ] || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    case $(cmdline_of "$pid") in
    *"$2"*)
        kill "$pid" 2>/dev/null || true
        n=0
        while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 100 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        kill -9 "$pid" 2>/dev/null || true
        ;;
    esac
    rm -f "$1"
}
