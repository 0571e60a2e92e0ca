# Shell helpers for taskserv scripts, copied with every taskserv to
# <root>/opt/provisioning/taskservs/<name>/lib/provisioning.sh (ops/installs.py):
#   . "$PROVISIONING_TASKSERV_DIR/lib/provisioning.sh"
# stop_pidfile FILE WORD stops the process FILE names when its command line
# holds WORD (a reused pid is left alone): TERM, then polling up to 10 s for it
# to end, then KILL. The pid file is removed.
cmdline_of() {
    if [ -r "/proc/$1/cmdline" ]; then
        tr '\000' ' ' <"/proc/$1/cmdline"
    else
        ps -p "$1" -o args= 2>/dev/null
    fi
}

running() {  # a zombie (exited, not yet reaped by whoever adopted it) counts as gone
    kill -0 "$1" 2>/dev/null || return 1
    [ -r "/proc/$1/stat" ] || return 0
    case $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) in
    Z*) return 1 ;;
    esac
    return 0
}

stop_pidfile() {
    [ -s "$1" ] || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    case $(cmdline_of "$pid") in
    *"$2"*)
        kill "$pid" 2>/dev/null || true
        n=0
        while running "$pid" && [ "$n" -lt 100 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        running "$pid" && kill -9 "$pid" 2>/dev/null
        ;;
    esac
    rm -f "$1"
}
