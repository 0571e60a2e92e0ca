"""The daemon's zygotes, as its config says: a lean one, and one with the SDKs.

zygote.py is one zygote; this is which ones the engine keeps and which op
forks from which. Two when an SDK of ``executor.python_zygote_preload`` is
installed here:

- the lean one (the package alone, no preloads) forks every Python op but
  the business ones;
- the SDK one (the package and the preloads) forks the business ops
  (``server.*``, ``taskserv.*``, ``cluster.*``: the ones that call a provider).

Why not one with everything: a fork, and the child's exit, cost in
proportion to the parent's memory (its page tables are copied and torn down
again), and boto3 in the only zygote made every noop op ~40% dearer (bench
figure 4: 0.23x -> 0.33x of a bare `python -c pass`) for the benefit of the
provider's ops alone. The price is one more process (~20 MiB RSS). One
zygote when nothing of the preload list is installed.
"""

from __future__ import annotations

import importlib.util

from provisioning.engine.zygote import Zygote, ZygoteSettings
from provisioning.ops.providers import BUSINESS_OPS


def settings_of(config, *, sdk: bool) -> ZygoteSettings:
    """The zygote settings of ``config``: with its preloads (the SDK zygote) or
    none (the lean one)."""
    return ZygoteSettings(config.executor.python_zygote,
                          tuple(config.executor.python_zygote_preload) if sdk else ())


def installed_preloads(config) -> list[str]:
    """What of ``executor.python_zygote_preload`` is installed here (found, not
    imported: the daemon itself never imports an SDK)."""
    found = []
    for name in config.executor.python_zygote_preload:
        try:
            if importlib.util.find_spec(name.partition(".")[0]) is not None:
                found.append(name)
        except (ImportError, ValueError):
            continue
    return found


def zygote_from_config(config, *, env: dict[str, str], sdk: bool) -> Zygote:
    """A zygote set up as ``config`` says, re-reading the same files when they change."""
    from provisioning.config import load_config  # the daemon's start only: config is loaded

    explicit = next((p for layer, p, _ in config.files if layer == "--config"), None)
    return Zygote(env=env, settings=settings_of(config, sdk=sdk),
                  config_files=[p for _, p, _ in config.files],
                  reload=lambda: settings_of(load_config(explicit), sdk=sdk))


class Zygotes:
    """The engine's zygotes (none until started): ``lean`` and maybe ``sdk``."""

    def __init__(self) -> None:
        self.lean: Zygote | None = None
        self.sdk: Zygote | None = None

    def start(self, config, *, env: dict[str, str]) -> None:
        self.lean = zygote_from_config(config, env=env, sdk=False)
        self.lean.start()
        if installed_preloads(config):
            self.sdk = zygote_from_config(config, env=env, sdk=True)
            self.sdk.start()

    def for_op(self, op: str) -> Zygote | None:
        """The zygote that forks ``op`` (None: spawned plainly)."""
        if self.sdk is not None and op.startswith(BUSINESS_OPS):
            return self.sdk
        return self.lean

    def close(self) -> None:
        """Retire them (after the engine stopped its tasks: they report the exits)."""
        for zygote in (self.lean, self.sdk):
            if zygote is not None:
                zygote.close()
