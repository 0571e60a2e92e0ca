"""Provider registry: built-in `local`, plus providers dropped into a lib dir.

An extension provider is a folder `<lib>/providers/<name>/provider.py`
defining `PROVIDER`, a subclass of provisioning.ops.providers.base.Provider.
Lib dirs are PROVISIONING_LIB then executor.lib_dirs; built-ins win.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioning.config import current_lib_dirs
from provisioning.errors import ValidationError
from provisioning.ops.providers.base import Provider
from provisioning.ops.state import StateStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from provisioning.ops.infra import Infra

BUILTIN = {"local": "provisioning.ops.providers.local:LocalProvider",
           "ssh": "provisioning.ops.providers.ssh:SshProvider",
           "aws": "provisioning.ops.providers.aws:AwsProvider",
           "upcloud": "provisioning.ops.providers.upcloud:UpCloudProvider"}

# Environment variables (by prefix) that a provider's tasks get from the daemon's
# environment: its credentials and their config (task environments are cleaned,
# engine/taskrun.py). Only tasks of business ops whose infra uses that provider.
CREDENTIAL_ENV: dict[str, tuple[str, ...]] = {"aws": ("AWS_",), "upcloud": ("UPCLOUD_",)}
BUSINESS_OPS = ("server.", "taskserv.", "cluster.")


def _extension_file(name: str, lib_dirs: list[Path]) -> Path | None:
    for lib in lib_dirs:
        f = lib / "providers" / name / "provider.py"
        if f.is_file():
            return f
    return None


def available(lib_dirs: list[Path] | None = None) -> list[str]:
    names = set(BUILTIN)
    for lib in (current_lib_dirs() if lib_dirs is None else lib_dirs):
        base = lib / "providers"
        if base.is_dir():
            names.update(p.name for p in base.iterdir() if (p / "provider.py").is_file())
    return sorted(names)


def provider_class(name: str, *, lib_dirs: list[Path] | None = None, where: str = "") -> type:
    dirs = current_lib_dirs() if lib_dirs is None else lib_dirs
    prefix = f"{where}: " if where else ""
    if name in BUILTIN:
        module_name, attr = BUILTIN[name].split(":")
        return getattr(importlib.import_module(module_name), attr)
    file = _extension_file(name, dirs)
    if file is None:
        raise ValidationError(f"{prefix}unknown provider '{name}'",
                              hint=f"available providers: {', '.join(available(dirs))}")
    spec = importlib.util.spec_from_file_location(f"provisioning_provider_{name}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a broken extension is an input error
        raise ValidationError(f"{file}: cannot load provider '{name}': {e}") from e
    cls = getattr(module, "PROVIDER", None)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ValidationError(f"{file}: must define PROVIDER, a subclass of "
                              "provisioning.ops.providers.base.Provider")
    return cls


def open_provider(name: str, *, infra: str, settings: dict[str, Any], state: Any,
                  lib_dirs: list[Path] | None = None):
    """A provider instance bound to one infra."""
    return provider_class(name, lib_dirs=lib_dirs)(infra=infra, settings=settings, state=state)


def for_infra(infra: Infra, state: StateStore) -> Provider:
    """The provider of a loaded infra."""
    return open_provider(infra.provider, infra=infra.name, settings=infra.provider_settings,
                         state=state)


def from_state(infra_name: str, state: StateStore) -> Provider | None:
    """The provider of an infra known only from state (its file may be gone)."""
    rec = state.infra_record(infra_name)
    if rec is None:
        return None
    return open_provider(rec["provider"], infra=infra_name,
                         settings=rec.get("provider_settings", {}), state=state)


def _provider_of(params: dict[str, Any], data_dir: Path) -> str | None:
    """The provider of a task's infra: its settings.toml, else what state recorded."""
    ref = params.get("infra")
    if isinstance(ref, str) and ref:
        file = Path(ref) / "settings.toml"
        try:
            with open(file, "rb") as f:
                head = tomllib.load(f).get("infra", {})
            if isinstance(head, dict) and isinstance(head.get("provider"), str):
                return head["provider"]
        except (OSError, ValueError):
            pass  # gone, unreadable or .ncl: what state remembers
    name = params.get("infra_name") or (Path(ref).name if isinstance(ref, str) else None)
    if not isinstance(name, str) or not name:
        return None
    try:
        record = StateStore(data_dir).infra_record(name)
    except ValueError:
        return None
    return record.get("provider") if record else None


def credential_env(op: str, params: dict[str, Any], data_dir: Path,
                   environ: dict[str, str] | None = None) -> dict[str, str]:
    """The credential variables one task may have (see CREDENTIAL_ENV); {} for
    every task that is not a business op of an infra on such a provider."""
    environ = dict(os.environ) if environ is None else environ
    prefixes = tuple(p for ps in CREDENTIAL_ENV.values() for p in ps)
    if not op.startswith(BUSINESS_OPS) or not any(k.startswith(prefixes) for k in environ):
        return {}  # the usual case costs no file read
    provider = _provider_of(params, data_dir)
    wanted = CREDENTIAL_ENV.get(provider or "", ())
    return {k: v for k, v in environ.items() if wanted and k.startswith(wanted)}
