"""A real headless Chromium for the dashboard's tests (and bench/dashboard.py).

Debian's `chromium` (`.ci/run` installs it under CI=true) driven by the
`playwright` package from PyPI with `executable_path`; `playwright install`
(which downloads a browser) is never used. Chromium as root needs
--no-sandbox; the other flags stop it from reaching out to the network
(component updates, sync, QUIC probes, first-run pages), which this network
refuses. Playwright gives every launch a fresh, temporary user-data-dir.

    reason = unavailable_reason()        # None, or why the browser tests skip
    with running_chromium() as browser:  # a Browser; closed (and reaped) on exit
        context = browser.new_context()  # its own cookie jar and storage
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def unavailable_reason() -> str | None:
    """Why a real browser cannot run here, or None when it can."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        return (f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does it "
                f"under CI=true){'; found ' + found if found else ''}")
    try:
        import playwright.sync_api  # noqa: F401 - only probing that it is installed
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


def _browser_env() -> dict[str, str]:
    """Chromium without our settings: the leak sweep recognises test processes by
    PROVISIONING_* paths, and a browser shared by a module belongs to no test."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}


@contextlib.contextmanager
def running_chromium(**launch: Any) -> Iterator[Any]:
    """A headless Chromium (playwright Browser) for the duration of the block."""
    from playwright.sync_api import sync_playwright  # optional test dependency

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS, env=_browser_env(), **launch)
        try:
            yield browser
        finally:
            browser.close()
