# __main__.py of the provisioning zipapp (packaging/build puts it in place of
# shiv's two-line one, then runs shiv's bootstrap exactly as shiv would).
#
# Why: shiv unpacks its site-packages under $SHIV_ROOT, else ~/.shiv. With
# HOME unset and no passwd entry, "~/.shiv" stays relative and the code lands
# in the current directory (linkedin/shiv#155); with a HOME that belongs to
# someone else (sudo without -H) root would unpack into that user's home. So
# when SHIV_ROOT is not set we pick ~/.shiv of a home this user owns, or stop
# with a clear message. Services always set SHIV_ROOT themselves.
import os
import sys


def _owned_dir(path):
    if not path or not os.path.isabs(path):
        return False
    try:
        return os.stat(path).st_uid == os.geteuid()
    except OSError:
        return False


def _choose_shiv_root():
    if os.environ.get("SHIV_ROOT") or not hasattr(os, "geteuid"):
        return
    home = os.environ.get("HOME", "")
    if _owned_dir(home):
        return  # shiv's own default, ~/.shiv, is right
    candidates = []
    try:
        import pwd

        candidates.append(pwd.getpwuid(os.geteuid()).pw_dir)
    except (ImportError, KeyError):
        pass
    for home in candidates:
        if _owned_dir(home):
            os.environ["SHIV_ROOT"] = os.path.join(home, ".shiv")
            return
    cache = os.environ.get("XDG_CACHE_HOME", "")
    if _owned_dir(cache):
        os.environ["SHIV_ROOT"] = os.path.join(cache, "shiv")
        return
    sys.stderr.write(
        "provisioning: cannot choose where to unpack the zipapp: HOME is unset or not "
        f"owned by uid {os.geteuid()}, and neither is its passwd home or XDG_CACHE_HOME.\n"
        "  hint: set SHIV_ROOT to a directory you own, e.g. SHIV_ROOT=/var/cache/"
        "provisioning/shiv for a service (not /tmp: noexec mounts break C extensions)\n"

    )
    sys.exit(2)


# Filled in by packaging/build: the shiv build id and whether site-packages
# needs site.addsitedir (.pth files). Empty when unknown: always bootstrap.
BUILD_ID = "@BUILD_ID@"
NEEDS_ADDSITEDIR = "@NEEDS_ADDSITEDIR@"
SHIV_OVERRIDES = ("SHIV_FORCE_EXTRACT", "SHIV_ENTRY_POINT", "SHIV_MODULE", "SHIV_CONSOLE_SCRIPT",
                  "SHIV_INTERPRETER", "SHIV_PREPEND_PYTHONPATH", "SHIV_EXTEND_PYTHONPATH")


def _warm_start():
    """Already unpacked: do what shiv's bootstrap would, minus its imports.

    shiv's bootstrap imports compileall, subprocess, zipfile, json, hashlib...
    and reads environment.json on every run; that doubles the start-up of a
    short command. When this build is already unpacked (the same check shiv
    makes) and no SHIV_* override asks for more, put its site-packages on
    sys.path where shiv would (before the interpreter's site dirs) and call
    the entry point. Anything unusual falls back to the real bootstrap.
    """
    if not BUILD_ID.isalnum() or NEEDS_ADDSITEDIR != "no":
        return False
    if any(os.environ.get(name) for name in SHIV_OVERRIDES):
        return False
    root = os.environ.get("SHIV_ROOT") or os.path.join(os.path.expanduser("~"), ".shiv")
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    site_packages = os.path.join(root, name + "_" + BUILD_ID, "site-packages")
    if not os.path.isabs(site_packages) or not os.path.isdir(site_packages):
        return False
    index = next((i for i, part in enumerate(sys.path)
                  if os.path.basename(part) in ("site-packages", "dist-packages")), len(sys.path))
    sys.path.insert(index, site_packages)
    from provisioning.zipapp import main

    sys.exit(main())


_choose_shiv_root()
_warm_start()

import _bootstrap  # noqa: E402  (shiv's runtime, at the root of the zipapp)

_bootstrap.bootstrap()
