#!/bin/sh
# install.sh: install provisioning (the CLI zipapp and the orchestrator service).
#
#   curl -fsSL "$URL/install.sh" | PROVISIONING_BASE_URL="$URL" sh
#   sh install.sh --bundle ./dist                 # air-gapped: no network at all
#   sh install.sh --uninstall [--purge]
#
# Root installs into /usr/local, anyone else into ~/.local (--prefix overrides).
# Checksums (SHA256SUMS) are verified before anything is written. Every file
# written is listed in <prefix>/share/provisioning/install-manifest, which
# --uninstall follows. POSIX sh; everything is in functions and the last line
# calls main, so a truncated download runs nothing. See docs/packaging.md.

set -eu

UNIT_NAME=provisioning-orchestrator.service
LAUNCHD_LABEL=io.provisioning.orchestrator
MIN_PYTHON=3.10

usage() {
    cat <<'EOF'
Usage: install.sh [options]

  --bundle DIR|FILE   install from a local dist dir (or one bundle .tar.gz with
                      SHA256SUMS beside it); never touches the network
  --prefix DIR        install under DIR (default: /usr/local as root, ~/.local otherwise)
  --enable-service    enable and start the orchestrator service (systemd or launchd)
  --no-service        do not write a service unit
  --no-providers      skip the providers bundle (provider SDK wheels, e.g. boto3)
                      even when SHA256SUMS lists one
  --service-dir DIR   write the service unit into DIR instead of the system location
  --uninstall         remove everything the last install wrote (see the manifest)
  --purge             with --uninstall: also delete the orchestrator's data dir
  --dry-run           print the plan; write nothing
  -h, --help          this text

Environment: PROVISIONING_BASE_URL (where bundles are downloaded from when
--bundle is not given), SHIV_ROOT (where the zipapp unpacks; default ~/.shiv).
EOF
}

say() { printf '%s\n' "$*"; }
note() { printf 'install.sh: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- arguments

parse_args() {
    OPT_BUNDLE=
    OPT_PREFIX=
    OPT_ENABLE=0
    OPT_NO_SERVICE=0
    OPT_SERVICE_DIR=
    OPT_UNINSTALL=0
    OPT_PURGE=0
    OPT_DRY_RUN=0
    OPT_NO_PROVIDERS=0
    while [ $# -gt 0 ]; do
        case $1 in
            --bundle) [ $# -ge 2 ] || die "--bundle needs a value"; OPT_BUNDLE=$2; shift ;;
            --bundle=*) OPT_BUNDLE=${1#*=} ;;
            --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; OPT_PREFIX=$2; shift ;;
            --prefix=*) OPT_PREFIX=${1#*=} ;;
            --service-dir) [ $# -ge 2 ] || die "--service-dir needs a value"
                OPT_SERVICE_DIR=$2; shift ;;
            --service-dir=*) OPT_SERVICE_DIR=${1#*=} ;;
            --enable-service) OPT_ENABLE=1 ;;
            --no-service) OPT_NO_SERVICE=1 ;;
            --no-providers) OPT_NO_PROVIDERS=1 ;;
            --uninstall) OPT_UNINSTALL=1 ;;
            --purge) OPT_PURGE=1 ;;
            --dry-run) OPT_DRY_RUN=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    if [ "$OPT_PURGE" = 1 ] && [ "$OPT_UNINSTALL" = 0 ]; then
        die "--purge only goes with --uninstall"
    fi
    if [ "$OPT_ENABLE" = 1 ] && [ "$OPT_NO_SERVICE" = 1 ]; then
        die "--enable-service and --no-service contradict each other"
    fi
}

# Paths end up in sed expressions, unit files and TOML strings: keep them plain.
check_plain_path() {
    case $2 in
        /*) ;;
        *) die "$1 must be an absolute path: $2" ;;
    esac
    case $2 in
        *[!A-Za-z0-9._/+@:,=-]*) die "$1 may hold only letters, digits and ._/+@:,=- : $2" ;;
    esac
}

# ---------------------------------------------------------------- the host

detect_host() {
    IS_ROOT=0
    [ "$(id -u)" = 0 ] && IS_ROOT=1
    HOST_OS=$(uname -s | tr '[:upper:]' '[:lower:]')
    HOST_MACHINE=$(uname -m)
    HOST_TAG="$HOST_OS-$HOST_MACHINE"
}

check_python() {
    PYTHON=$(command -v python3 2>/dev/null) || PYTHON=
    [ -n "$PYTHON" ] || die "python3 >= $MIN_PYTHON is required and none is on PATH (the zipapp runs '/usr/bin/env python3')"
    if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
        PY_HAVE=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo unknown)
        die "python3 >= $MIN_PYTHON is required; $PYTHON is $PY_HAVE (the zipapp runs the first python3 on PATH)"
    fi
    PYTHON_DIR=$(dirname "$PYTHON")
}

choose_prefix() {
    if [ -n "$OPT_PREFIX" ]; then
        case $OPT_PREFIX in /*) ;; *) OPT_PREFIX="$(pwd)/$OPT_PREFIX" ;; esac
        PREFIX=${OPT_PREFIX%/}
        [ -n "$PREFIX" ] || PREFIX=/
    elif [ "$IS_ROOT" = 1 ]; then
        PREFIX=/usr/local
    else
        [ -n "${HOME:-}" ] || die "HOME is not set; pass --prefix DIR"
        PREFIX="$HOME/.local"
    fi
    check_plain_path "--prefix" "$PREFIX"
    SHARE="$PREFIX/share/provisioning"
    MANIFEST="$SHARE/install-manifest"
}

# The nearest existing ancestor must be writable, and so must any of our
# subdirectories that already exist.
check_prefix_writable() {
    WR_DIR=$PREFIX
    while [ ! -e "$WR_DIR" ]; do WR_DIR=$(dirname "$WR_DIR"); done
    [ -d "$WR_DIR" ] || die "$WR_DIR is not a directory (prefix $PREFIX)"
    [ -w "$WR_DIR" ] || die "cannot write to $WR_DIR (prefix $PREFIX): run as root or pass --prefix"
    for WR_SUB in bin lib lib/provisioning share share/provisioning; do
        if [ -d "$PREFIX/$WR_SUB" ] && [ ! -w "$PREFIX/$WR_SUB" ]; then
            die "cannot write to $PREFIX/$WR_SUB: run as root or pass --prefix"
        fi
    done
}

choose_hasher() {
    if command -v sha256sum >/dev/null 2>&1; then
        HASHER="sha256sum"
    elif command -v shasum >/dev/null 2>&1; then
        HASHER="shasum -a 256"
    else
        die "neither sha256sum nor shasum is installed: cannot verify the download"
    fi
}

file_sha256() {
    # shellcheck disable=SC2086  # HASHER is a command with its arguments
    $HASHER "$1" | cut -d ' ' -f 1
}

# ---------------------------------------------------------------- temp space

make_tmp() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/provisioning-install.XXXXXX") || die "mktemp failed"
    trap 'rm -rf "$TMP"' EXIT
    trap 'exit 130' INT TERM HUP
}

# ---------------------------------------------------------------- bundles

# Sets SUMS_FILE and SRC_DIR, and downloads when not offline.
locate_sums() {
    if [ -n "$OPT_BUNDLE" ]; then
        if [ -d "$OPT_BUNDLE" ]; then
            SRC_DIR=$OPT_BUNDLE
            ONLY_FILE=
        elif [ -f "$OPT_BUNDLE" ]; then
            SRC_DIR=$(dirname "$OPT_BUNDLE")
            ONLY_FILE=$(basename "$OPT_BUNDLE")
        else
            die "--bundle $OPT_BUNDLE: no such file or directory"
        fi
        SUMS_FILE="$SRC_DIR/SHA256SUMS"
        [ -f "$SUMS_FILE" ] || die "no SHA256SUMS in $SRC_DIR: cannot verify the bundle"
        return 0
    fi
    ONLY_FILE=
    BASE_URL=${PROVISIONING_BASE_URL:-}
    [ -n "$BASE_URL" ] || die "set PROVISIONING_BASE_URL (where the bundles are) or pass --bundle DIR"
    BASE_URL=${BASE_URL%/}
    command -v curl >/dev/null 2>&1 || die "curl is required to download (or use --bundle)"
    if [ "$OPT_DRY_RUN" = 1 ]; then
        say "would download $BASE_URL/SHA256SUMS and the bundles for $HOST_TAG it lists"
        SUMS_FILE=
        return 0
    fi
    SRC_DIR="$TMP/download"
    mkdir "$SRC_DIR"
    SUMS_FILE="$SRC_DIR/SHA256SUMS"
    curl -fsSL "$BASE_URL/SHA256SUMS" -o "$SUMS_FILE" || die "cannot download $BASE_URL/SHA256SUMS"
}

# The one bundle of a component for this host, from the names SHA256SUMS lists.
pick_bundle() {
    PICK_COMPONENT=$1
    PICKED=$(sed -n 's/^[0-9a-fA-F]\{64\}  *\*\{0,1\}\(provisioning-'"$PICK_COMPONENT"'-[^ ]*-'"$HOST_TAG"'-[^ ]*\.tar\.gz\)$/\1/p' "$SUMS_FILE")
    PICK_COUNT=$(printf '%s' "$PICKED" | grep -c . || true)
    if [ "$PICK_COUNT" -gt 1 ]; then
        die "several $PICK_COMPONENT bundles for $HOST_TAG in SHA256SUMS; pass --bundle FILE: $(echo "$PICKED" | tr '\n' ' ')"
    fi
    if [ "$PICK_COUNT" = 0 ]; then
        PICK_OTHER=$(sed -n 's/^[0-9a-fA-F]\{64\}  *\*\{0,1\}\(provisioning-'"$PICK_COMPONENT"'-.*\.tar\.gz\)$/\1/p' "$SUMS_FILE" | tr '\n' ' ')
        if [ -n "$PICK_OTHER" ]; then
            die "no $PICK_COMPONENT bundle for this host ($HOST_TAG); available: $PICK_OTHER"
        fi
        PICKED=
    fi
}

# The providers bundle (pure-Python wheels: one for every platform), if listed.
pick_providers() {
    PROVIDERS_NAME=
    [ "$OPT_NO_PROVIDERS" = 1 ] && return 0
    PROVIDERS_NAME=$(sed -n 's/^[0-9a-fA-F]\{64\}  *\*\{0,1\}\(provisioning-providers-[^ ]*\.tar\.gz\)$/\1/p' "$SUMS_FILE")
    if [ "$(printf '%s' "$PROVIDERS_NAME" | grep -c . || true)" -gt 1 ]; then
        die "several providers bundles in SHA256SUMS; pass --bundle FILE: $(echo "$PROVIDERS_NAME" | tr '\n' ' ')"
    fi
}

choose_bundles() {
    CORE_NAME=
    PLATFORM_NAME=
    PROVIDERS_NAME=
    if [ -z "$SUMS_FILE" ]; then
        return 0  # dry run of an online install: nothing fetched
    fi
    if [ -n "$ONLY_FILE" ]; then
        case $ONLY_FILE in
            provisioning-core-*.tar.gz) CORE_NAME=$ONLY_FILE ;;
            provisioning-platform-*.tar.gz) PLATFORM_NAME=$ONLY_FILE ;;
            provisioning-providers-*.tar.gz) PROVIDERS_NAME=$ONLY_FILE ;;
            *) die "$ONLY_FILE is not a provisioning-core-*, -platform-* or -providers-* bundle" ;;
        esac
        case $ONLY_FILE in
            *"-$HOST_TAG-"* | provisioning-providers-*) ;;
            *) die "$ONLY_FILE is not built for this host ($HOST_TAG)" ;;
        esac
    else
        pick_bundle core
        CORE_NAME=$PICKED
        pick_bundle platform
        PLATFORM_NAME=$PICKED
        pick_providers
        [ -n "$CORE_NAME" ] || [ -n "$PLATFORM_NAME" ] || die "SHA256SUMS lists no provisioning bundles"
    fi
    if [ -z "$CORE_NAME" ] && [ ! -f "$PREFIX/bin/provisioning" ]; then
        CB_WHAT=platform
        [ -n "$PROVIDERS_NAME" ] && CB_WHAT=providers
        die "installing the $CB_WHAT bundle alone needs the core bundle installed first ($PREFIX/bin/provisioning is missing)"
    fi
}

fetch_and_verify() {
    for FV_NAME in $CORE_NAME $PLATFORM_NAME $PROVIDERS_NAME; do
        if [ -z "$OPT_BUNDLE" ]; then
            curl -fsSL "$BASE_URL/$FV_NAME" -o "$SRC_DIR/$FV_NAME" || die "cannot download $BASE_URL/$FV_NAME"
        fi
        [ -f "$SRC_DIR/$FV_NAME" ] || die "$SRC_DIR/$FV_NAME is missing"
        FV_WANT=$(awk -v n="$FV_NAME" '$2 == n || $2 == "*" n { print $1; exit }' "$SUMS_FILE")
        [ -n "$FV_WANT" ] || die "SHA256SUMS has no entry for $FV_NAME"
        FV_HAVE=$(file_sha256 "$SRC_DIR/$FV_NAME")
        if [ "$FV_WANT" != "$FV_HAVE" ]; then
            die "checksum mismatch for $FV_NAME (expected $FV_WANT, got $FV_HAVE): refusing to install anything"
        fi
        note "verified $FV_NAME"
    done
}

# Unpack a verified bundle to $TMP/<component>; BUNDLE_ROOT is its top dir.
unpack() {
    mkdir "$TMP/$1"
    tar -xzf "$SRC_DIR/$2" -C "$TMP/$1" || die "cannot unpack $2"
    BUNDLE_ROOT=$(find "$TMP/$1" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    [ -f "$BUNDLE_ROOT/BUNDLE" ] || die "$2 is not a provisioning bundle (no BUNDLE file)"
}

bundle_field() {
    sed -n "s/^$2=//p" "$1/BUNDLE" | head -n 1
}

# ---------------------------------------------------------------- zipapp unpacking

# Where the CLI of the installing user unpacks (what the zipapp itself picks).
user_shiv_root() {
    if [ -n "${SHIV_ROOT:-}" ]; then
        USER_SHIV_ROOT=$SHIV_ROOT
    elif [ -n "${HOME:-}" ]; then
        USER_SHIV_ROOT="$HOME/.shiv"
    else
        USER_SHIV_ROOT=
    fi
}

# Run `provisioning version` from $1 with SHIV_ROOT=$2: unpacks once, and
# proves the zipapp runs on this host (platform, Python, libc) before or after install.
pre_extract() {
    PE_OUT=$(SHIV_ROOT=$2 "$PYTHON" "$1" version 2>&1) || {
        printf '%s\n' "$PE_OUT" >&2
        die "the zipapp does not run here (see above); nothing more was installed"
    }
}

# A mkdir -p that records each directory it creates as a manifest "d" line.
make_dirs() {
    MD_TARGET=$1
    MD_MODE=$2
    MD_MISSING=
    MD_DIR=$MD_TARGET
    while [ ! -d "$MD_DIR" ]; do
        MD_MISSING="$MD_DIR
$MD_MISSING"
        MD_DIR=$(dirname "$MD_DIR")
    done
    printf '%s' "$MD_MISSING" | while IFS= read -r MD_ONE; do
        [ -n "$MD_ONE" ] || continue
        mkdir -m "$MD_MODE" "$MD_ONE" || exit 1
        printf '%s d %s\n' "$3" "$MD_ONE" >>"$NEW_MANIFEST"
    done || die "cannot create $MD_TARGET"
}

# True if a live process maps a file under $1 (the daemon maps psutil's .so).
extraction_in_use() {
    if [ -d /proc/self ]; then
        grep -l -F "$1/" /proc/[0-9]*/maps >/dev/null 2>&1
    elif command -v lsof >/dev/null 2>&1; then
        [ -n "$(lsof -t +D "$1" 2>/dev/null)" ]
    else
        return 0  # cannot tell: keep it
    fi
}

# Remove unpacked zipapps of builds other than $2 under root $1 (linkedin/shiv#188).
clean_old_extractions() {
    for CO_DIR in "$1"/provisioning_*; do
        [ -d "$CO_DIR" ] || continue
        CO_ID=${CO_DIR##*/provisioning_}
        CO_ID=${CO_ID%.tmp}
        [ "$CO_ID" = "$2" ] && continue
        if extraction_in_use "$CO_DIR"; then
            note "keeping $CO_DIR: a running process still uses it"
            continue
        fi
        rm -rf "$CO_DIR" "$1/.provisioning_${CO_ID}_lock"
        note "removed old extraction $CO_DIR"
    done
}

# Unpack for one root, recording what that created; then drop old builds there.
extract_into() {
    EI_ROOT=$1
    make_dirs "$EI_ROOT" 0700 core
    pre_extract "$PREFIX/bin/provisioning" "$EI_ROOT"
    printf 'core x %s\n' "$EI_ROOT/provisioning_$BUILD_ID" >>"$NEW_MANIFEST"
    printf 'core f %s\n' "$EI_ROOT/.provisioning_${BUILD_ID}_lock" >>"$NEW_MANIFEST"
    clean_old_extractions "$EI_ROOT" "$BUILD_ID"
}

# ---------------------------------------------------------------- copying files

rewrite_for_prefix() {
    # $1 source, $2 destination: /usr/local -> prefix in unit templates and
    # defaults; per-user locations in user units and plists.
    RW_SED="s|/usr/local/|$PREFIX/|g"
    if [ "$PREFIX" = /usr/local ]; then RW_SED="s|^\$||"; fi
    RW_EXTRA="s|^lib_dirs = \[\]|lib_dirs = [\"$PREFIX/lib/provisioning\"]|"
    RW_USER="s|^\$||"
    if [ "$IS_ROOT" = 0 ] && [ -n "${HOME:-}" ]; then
        RW_USER="s|>/Library/|>$HOME/Library/|"
    fi
    RW_PATH="s|^\$||"
    case $PYTHON_DIR in
        *[!A-Za-z0-9._/+@:,=-]*) ;;  # unusual characters: keep the template's PATH
        *) RW_PATH="s|<string>.*:/opt/homebrew/bin:/usr/bin:/bin:/usr/sbin:/sbin</string>|<string>$PYTHON_DIR:$PREFIX/bin:/usr/local/bin:/opt/homebrew/bin:/usr/bin:/bin:/usr/sbin:/sbin</string>|" ;;
    esac
    sed -e "$RW_SED" -e "$RW_EXTRA" -e "$RW_USER" -e "$RW_PATH" "$1" >"$2"
}

# Install one regular file or symlink atomically (temp name, then rename).
put() {
    PUT_SRC=$1
    PUT_DEST=$2
    PUT_COMP=$3
    make_dirs "$(dirname "$PUT_DEST")" 0755 "$PUT_COMP"
    PUT_TMP="$PUT_DEST.install-tmp.$$"
    rm -f "$PUT_TMP"
    if [ -L "$PUT_SRC" ]; then
        ln -s "$(readlink "$PUT_SRC")" "$PUT_TMP"
        PUT_KIND=l
    else
        case $PUT_DEST in
            "$SHARE"/units/* | "$SHARE"/config/config.defaults.toml) rewrite_for_prefix "$PUT_SRC" "$PUT_TMP" ;;
            *) cp "$PUT_SRC" "$PUT_TMP" ;;
        esac
        if [ -x "$PUT_SRC" ]; then chmod 0755 "$PUT_TMP"; else chmod 0644 "$PUT_TMP"; fi
        PUT_KIND=f
    fi
    mv -f "$PUT_TMP" "$PUT_DEST" || die "cannot write $PUT_DEST"
    printf '%s %s %s\n' "$PUT_COMP" "$PUT_KIND" "$PUT_DEST" >>"$NEW_MANIFEST"
}

install_tree() {
    # $1 unpacked bundle root, $2 component
    (cd "$1" && find . \( -type f -o -type l \) ! -name BUNDLE | sed 's|^\./||' | LC_ALL=C sort) >"$TMP/$2.files"
    while IFS= read -r IT_REL; do
        put "$1/$IT_REL" "$PREFIX/$IT_REL" "$2"
    done <"$TMP/$2.files"
}

# ---------------------------------------------------------------- provider SDKs

# Unpack the bundle's wheels into <prefix>/lib/provisioning-providers (beside the
# lib dir, where provisioning/ops/providers/sdk.py looks), replacing an older one
# whole. Pure-Python wheels are zip files laid out as site-packages: unzipping them
# (with this python3, so no pip is needed) is their install.
# Each wheel against the bundle's own wheels/SHA256SUMS, before anything is written.
verify_providers() {
    VP_WHEELS="$1/wheels"
    [ -f "$VP_WHEELS/SHA256SUMS" ] || die "the providers bundle has no wheels/SHA256SUMS"
    while read -r VP_WANT VP_NAME; do
        [ -f "$VP_WHEELS/$VP_NAME" ] || die "the providers bundle lacks $VP_NAME"
        [ "$(file_sha256 "$VP_WHEELS/$VP_NAME")" = "$VP_WANT" ] || die "checksum mismatch for wheel $VP_NAME: refusing to install anything"
    done <"$VP_WHEELS/SHA256SUMS"
}

install_providers() {
    IP_WHEELS="$1/wheels"
    IP_DEST="$PREFIX/lib/provisioning-providers"
    make_dirs "$PREFIX/lib" 0755 providers
    IP_NEW="$IP_DEST.install-tmp.$$"
    rm -rf "$IP_NEW"
    mkdir -m 0755 "$IP_NEW" || die "cannot create $IP_NEW"
    while read -r _ IP_NAME; do
        "$PYTHON" -m zipfile -e "$IP_WHEELS/$IP_NAME" "$IP_NEW" || die "cannot unpack wheel $IP_NAME"
    done <"$IP_WHEELS/SHA256SUMS"
    # a wheel's <name>.data/: purelib/platlib belong in site-packages; scripts are not needed
    for IP_DATA in "$IP_NEW"/*.data; do
        [ -d "$IP_DATA" ] || continue
        for IP_SUB in purelib platlib; do
            if [ -d "$IP_DATA/$IP_SUB" ]; then cp -R "$IP_DATA/$IP_SUB/." "$IP_NEW/"; fi
        done
        rm -rf "$IP_DATA"
    done
    cp "$IP_WHEELS/SHA256SUMS" "$IP_NEW/WHEELS.SHA256SUMS"
    chmod -R u+rwX,go+rX,go-w "$IP_NEW"
    if [ -e "$IP_DEST" ]; then
        mv "$IP_DEST" "$IP_DEST.old.$$" || die "cannot replace $IP_DEST"
    fi
    mv "$IP_NEW" "$IP_DEST" || die "cannot write $IP_DEST"
    rm -rf "$IP_DEST.old.$$"
    printf 'providers t %s\n' "$IP_DEST" >>"$NEW_MANIFEST"
    note "installed $(grep -c . "$IP_WHEELS/SHA256SUMS") provider SDK wheels into $IP_DEST"
}

# ---------------------------------------------------------------- the service

service_plan() {
    # Sets SVC_KIND (systemd-system|systemd-user|launchd-system|launchd-user|none),
    # SVC_SRC (template under $SHARE), SVC_DEST, SVC_REAL (1 = the live location).
    SVC_KIND=none
    SVC_REAL=0
    [ "$OPT_NO_SERVICE" = 1 ] && return 0
    if [ "$HOST_OS" = darwin ]; then
        if [ "$IS_ROOT" = 1 ]; then
            SVC_KIND=launchd-system; SVC_DIR=/Library/LaunchDaemons
        else
            SVC_KIND=launchd-user; SVC_DIR="$HOME/Library/LaunchAgents"
        fi
        SVC_SRC="$SHARE/units/$LAUNCHD_LABEL.plist"
        SVC_FILE="$LAUNCHD_LABEL.plist"
    elif [ -n "$OPT_SERVICE_DIR" ] || command -v systemctl >/dev/null 2>&1; then
        if [ "$IS_ROOT" = 1 ]; then
            SVC_KIND=systemd-system; SVC_DIR=/etc/systemd/system
            SVC_SRC="$SHARE/units/$UNIT_NAME"
        else
            SVC_KIND=systemd-user; SVC_DIR="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
            SVC_SRC="$SHARE/units/user/$UNIT_NAME"
        fi
        SVC_FILE=$UNIT_NAME
    else
        note "no systemd here: not writing a service unit (the CLI auto-starts the orchestrator)"
        return 0
    fi
    if [ -n "$OPT_SERVICE_DIR" ]; then
        SVC_DIR=$OPT_SERVICE_DIR
    else
        SVC_REAL=1
    fi
    check_plain_path "--service-dir" "$SVC_DIR"
    SVC_DEST="$SVC_DIR/$SVC_FILE"
}

systemd_running() {
    if [ "$SVC_KIND" = systemd-system ]; then
        [ -d /run/systemd/system ]
    else
        systemctl --user show-environment >/dev/null 2>&1
    fi
}

systemctl_for() {
    if [ "$SVC_KIND" = systemd-user ]; then systemctl --user "$@"; else systemctl "$@"; fi
}

launchd_domain() {
    if [ "$SVC_KIND" = launchd-system ]; then echo system; else echo "gui/$(id -u)"; fi
}

install_service() {
    [ "$SVC_KIND" = none ] && return 0
    [ -n "$PLATFORM_ROOT" ] || return 0  # units come with the platform bundle
    put "$SVC_SRC" "$SVC_DEST" platform
    # the template under share/ is already rewritten; put copied it verbatim
    case $SVC_KIND in
        launchd-*)
            make_dirs "$(service_log_dir)" 0755 platform
            if [ "$SVC_REAL" = 1 ] && [ "$OPT_ENABLE" = 1 ]; then
                launchctl bootout "$(launchd_domain)/$LAUNCHD_LABEL" >/dev/null 2>&1 || true
                launchctl bootstrap "$(launchd_domain)" "$SVC_DEST" || die "launchctl bootstrap failed"
                say "service: loaded $LAUNCHD_LABEL"
            fi
            ;;
        systemd-*)
            if [ "$SVC_REAL" = 1 ] && systemd_running; then
                systemctl_for daemon-reload || true
                if [ "$OPT_ENABLE" = 1 ]; then
                    systemctl_for enable --now "$UNIT_NAME" || die "systemctl enable --now $UNIT_NAME failed"
                    say "service: enabled and started $UNIT_NAME"
                else
                    systemctl_for try-restart "$UNIT_NAME" || true
                fi
            elif [ "$OPT_ENABLE" = 1 ]; then
                note "systemd is not running here: wrote $SVC_DEST but did not enable it"
            fi
            ;;
    esac
}

service_log_dir() {
    if [ "$SVC_KIND" = launchd-system ]; then echo /Library/Logs/provisioning; else echo "$HOME/Library/Logs/provisioning"; fi
}

# Where the service unpacks the zipapp (the unit's SHIV_ROOT).
service_shiv_root() {
    case $SVC_KIND in
        systemd-system) echo /var/cache/provisioning/shiv ;;
        systemd-user) echo "${XDG_CACHE_HOME:-$HOME/.cache}/provisioning/shiv" ;;
        launchd-system) echo /Library/Caches/provisioning/shiv ;;
        launchd-user) echo "$HOME/Library/Caches/provisioning/shiv" ;;
    esac
}

# ---------------------------------------------------------------- manifest

# Lines: "<component> <f|l|x|t|d> <absolute path>". d = a directory we created,
# t = a whole tree we own (the provider SDKs), x = a zipapp extraction.
finish_manifest() {
    if [ -f "$MANIFEST" ]; then
        # Keep the other component's entries when only one bundle was installed,
        # and every directory we created earlier (they exist now, so this run
        # did not record them).
        while IFS=' ' read -r FM_COMP FM_KIND FM_PATH; do
            if [ "$FM_KIND" = d ] || ! echo " $INSTALLED_COMPONENTS " | grep -q " $FM_COMP "; then
                printf '%s %s %s\n' "$FM_COMP" "$FM_KIND" "$FM_PATH" >>"$NEW_MANIFEST"
            fi
        done <"$MANIFEST"
        # Upgrade: what the old install had and this one no longer ships.
        while IFS=' ' read -r FM_COMP FM_KIND FM_PATH; do
            [ "$FM_KIND" = d ] && continue
            grep -qxF "$FM_COMP $FM_KIND $FM_PATH" "$NEW_MANIFEST" && continue
            case $FM_KIND in
                x)
                    case $FM_PATH in */provisioning_*) ;; *) continue ;; esac
                    if extraction_in_use "$FM_PATH"; then
                        # still running: keep it listed so --uninstall removes it later
                        printf '%s %s %s\n' "$FM_COMP" "$FM_KIND" "$FM_PATH" >>"$NEW_MANIFEST"
                    else
                        rm -rf "$FM_PATH"
                    fi ;;
                t) case $FM_PATH in */provisioning-providers) rm -rf "$FM_PATH" ;; esac ;;
                *) rm -f "$FM_PATH" ;;
            esac
        done <"$MANIFEST"
    fi
    # sorted: the same install always writes the same manifest
    LC_ALL=C sort -u "$NEW_MANIFEST" >"$MANIFEST.tmp.$$"
    chmod 0644 "$MANIFEST.tmp.$$"
    mv -f "$MANIFEST.tmp.$$" "$MANIFEST"
}

# ---------------------------------------------------------------- install

print_plan() {
    say "plan (dry run, nothing is written):"
    say "  prefix:   $PREFIX"
    say "  python:   $PYTHON"
    if [ -n "$PROVIDERS_NAME" ]; then
        say "  bundle:   $PROVIDERS_NAME (checksum verified)"
        say "  install:  $PREFIX/lib/provisioning-providers ($(tar -tzf "$SRC_DIR/$PROVIDERS_NAME" | grep -c '\.whl$') wheels)"
    fi
    for PP_NAME in $CORE_NAME $PLATFORM_NAME; do
        say "  bundle:   $PP_NAME (checksum verified)"
        tar -tzf "$SRC_DIR/$PP_NAME" | sed -n 's|^[^/]*/\(.*[^/]\)$|\1|p' | grep -vx BUNDLE |
            while IFS= read -r PP_REL; do say "  install:  $PREFIX/$PP_REL"; done
    done
    if [ "$SVC_KIND" != none ]; then
        say "  service:  $SVC_DEST ($SVC_KIND$([ "$OPT_ENABLE" = 1 ] && echo ', enabled'))"
    fi
    [ -n "$USER_SHIV_ROOT" ] && say "  unpack:   $USER_SHIV_ROOT/provisioning_<build id>"
    say "  manifest: $MANIFEST"
}

do_install() {
    check_prefix_writable
    choose_hasher
    [ "$OPT_DRY_RUN" = 1 ] || make_tmp
    locate_sums
    choose_bundles
    [ -n "$SUMS_FILE" ] && fetch_and_verify
    user_shiv_root
    service_plan
    if [ "$OPT_DRY_RUN" = 1 ]; then
        print_plan
        return 0
    fi

    INSTALLED_COMPONENTS=
    CORE_ROOT=
    PLATFORM_ROOT=
    if [ -n "$CORE_NAME" ]; then
        unpack core "$CORE_NAME"
        CORE_ROOT=$BUNDLE_ROOT
        INSTALLED_COMPONENTS="core"
        # Prove the zipapp runs here before writing anything into the prefix.
        pre_extract "$CORE_ROOT/bin/provisioning" "$TMP/probe-shiv"
    fi
    if [ -n "$PLATFORM_NAME" ]; then
        unpack platform "$PLATFORM_NAME"
        PLATFORM_ROOT=$BUNDLE_ROOT
        INSTALLED_COMPONENTS="$INSTALLED_COMPONENTS platform"
    fi
    PROVIDERS_ROOT=
    if [ -n "$PROVIDERS_NAME" ]; then
        unpack providers "$PROVIDERS_NAME"
        PROVIDERS_ROOT=$BUNDLE_ROOT
        verify_providers "$PROVIDERS_ROOT"
        INSTALLED_COMPONENTS="$INSTALLED_COMPONENTS providers"
    fi

    NEW_MANIFEST="$TMP/manifest.new"
    : >"$NEW_MANIFEST"
    if [ -n "$CORE_ROOT" ]; then install_tree "$CORE_ROOT" core; fi
    if [ -n "$PLATFORM_ROOT" ]; then install_tree "$PLATFORM_ROOT" platform; fi
    if [ -n "$PROVIDERS_ROOT" ]; then install_providers "$PROVIDERS_ROOT"; fi
    install_service

    BUILD_ID=$(bundle_field "${CORE_ROOT:-${PLATFORM_ROOT:-$PROVIDERS_ROOT}}" build_id)
    if [ -n "$CORE_ROOT" ] && [ -n "$USER_SHIV_ROOT" ]; then
        extract_into "$USER_SHIV_ROOT"
    fi
    if [ "$SVC_KIND" != none ] && [ "$SVC_REAL" = 1 ] && [ -n "$CORE_ROOT" ]; then
        extract_into "$(service_shiv_root)"
    fi
    finish_manifest

    say "installed provisioning into $PREFIX ($INSTALLED_COMPONENTS )"
    if [ -n "$CORE_ROOT" ]; then say "  core $(bundle_field "$CORE_ROOT" version)"; fi
    if [ -n "$PLATFORM_ROOT" ]; then say "  platform $(bundle_field "$PLATFORM_ROOT" version)"; fi
    if [ -n "$PROVIDERS_ROOT" ]; then say "  providers $(bundle_field "$PROVIDERS_ROOT" version) ($(tr '\n' ' ' <"$PROVIDERS_ROOT/requirements.txt"))"; fi
    [ "$SVC_KIND" != none ] && say "  service unit: $SVC_DEST"
    case ":${PATH:-}:" in
        *":$PREFIX/bin:"*) ;;
        *) say "  $PREFIX/bin is not on your PATH; add it, e.g.: export PATH=\"$PREFIX/bin:\$PATH\"" ;;
    esac
}

# ---------------------------------------------------------------- uninstall

stop_service_from_manifest() {
    awk '$2 == "f" && ($3 ~ /\.service$/ || $3 ~ /\.plist$/) { print $3 }' "$MANIFEST" >"$MANIFEST.units.$$"
    while IFS= read -r SS_UNIT; do
        case $SS_UNIT in
            /etc/systemd/system/*)
                SVC_KIND=systemd-system
                if command -v systemctl >/dev/null 2>&1 && systemd_running; then
                    systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1 || true
                fi ;;
            */systemd/user/*)
                SVC_KIND=systemd-user
                if command -v systemctl >/dev/null 2>&1 && systemd_running; then
                    systemctl --user disable --now "$UNIT_NAME" >/dev/null 2>&1 || true
                fi ;;
            /Library/LaunchDaemons/*) launchctl bootout "system/$LAUNCHD_LABEL" >/dev/null 2>&1 || true ;;
            */Library/LaunchAgents/*) launchctl bootout "gui/$(id -u)/$LAUNCHD_LABEL" >/dev/null 2>&1 || true ;;
        esac
    done <"$MANIFEST.units.$$"
    rm -f "$MANIFEST.units.$$"
}

purge_target() {
    PURGE_DIR=$("$PREFIX/bin/provisioning" --json env 2>/dev/null |
        "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["data_dir"])' 2>/dev/null) ||
        die "cannot ask $PREFIX/bin/provisioning for its data dir; nothing was removed"
    case $PURGE_DIR in
        / | "" | "$PREFIX" | "${HOME:-/}" | /usr | /var | /var/lib | /etc) die "refusing to purge data dir '$PURGE_DIR'" ;;
        /*/*) ;;
        *) die "refusing to purge data dir '$PURGE_DIR'" ;;
    esac
}

do_uninstall() {
    [ -f "$MANIFEST" ] || die "no install manifest at $MANIFEST: nothing installed there (or installed by hand)"
    check_prefix_writable
    PURGE_DIR=
    [ "$OPT_PURGE" = 1 ] && purge_target
    if [ "$OPT_DRY_RUN" = 1 ]; then
        say "plan (dry run, nothing is removed):"
        awk '$2 != "d" { print "  remove:   " $3 }' "$MANIFEST"
        awk '$2 == "d" { print "  rmdir:    " $3 " (if empty)" }' "$MANIFEST"
        say "  remove:   $MANIFEST"
        [ -n "$PURGE_DIR" ] && say "  purge:    $PURGE_DIR"
        return 0
    fi
    stop_service_from_manifest
    # an orchestrator the CLI auto-started would keep running from the files we remove
    "$PREFIX/bin/provisioning" orchestrator stop >/dev/null 2>&1 || true
    while IFS=' ' read -r _ UN_KIND UN_PATH; do
        case $UN_KIND in
            f | l) rm -f "$UN_PATH" ;;
            x) case $UN_PATH in */provisioning_*) rm -rf "$UN_PATH" ;; esac ;;
            t) case $UN_PATH in */provisioning-providers) rm -rf "$UN_PATH" ;; esac ;;
        esac
    done <"$MANIFEST"
    if [ -n "$PURGE_DIR" ]; then rm -rf "$PURGE_DIR" && say "purged $PURGE_DIR"; fi
    # directories we created, deepest first (a parent sorts before its
    # children); left alone when something else now lives in them
    UN_DIRS=$(awk '$2 == "d" { print $3 }' "$MANIFEST" | LC_ALL=C sort -r)
    rm -f "$MANIFEST"
    printf '%s\n' "$UN_DIRS" | while IFS= read -r UN_DIR; do
        if [ -n "$UN_DIR" ]; then rmdir "$UN_DIR" 2>/dev/null || true; fi
    done
    say "uninstalled provisioning from $PREFIX"
    [ "$OPT_PURGE" = 1 ] || say "  the data dir was kept (use --uninstall --purge to delete it)"
}

main() {
    parse_args "$@"
    detect_host
    check_python
    choose_prefix
    if [ "$OPT_UNINSTALL" = 1 ]; then
        do_uninstall
    else
        do_install
    fi
}

main "$@"
