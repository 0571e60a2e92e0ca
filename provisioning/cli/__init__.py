"""The `provisioning` command line: parse, pick a mode, call engine or client, render.

`main` here is the console-script entry. It answers `version`/`--version`
without importing click (start-up is a promise: issue 2's <= 3x `python -c
pass`), and hands everything else to provisioning.cli.main.
"""

from __future__ import annotations

import sys

from provisioning import __version__


def _fast_version(args: list[str]) -> bool:
    if args == ["--version"]:
        sys.stdout.write(f"provisioning {__version__}\n")
        return True
    if sorted(args) in (["version"], ["--json", "version"]):
        from provisioning.versions import format_versions  # lazy: `--version` needs none of it

        sys.stdout.write(format_versions("--json" in args))
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if _fast_version(args):
        return 0
    from provisioning.cli.main import main as full_main  # lazy: click, off the fast path

    return full_main(args)
