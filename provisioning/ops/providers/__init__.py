"""Provider registry: built-in `local`, plus providers dropped into a lib dir.

An extension provider is a folder `<lib>/providers/<name>/provider.py`
defining `PROVIDER`, a subclass of provisioning.ops.providers.base.Provider.
Lib dirs are PROVISIONING_LIB then executor.lib_dirs; built-ins win.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioning.config import current_lib_dirs
from provisioning.errors import ValidationError
from provisioning.ops.providers.base import Provider
from provisioning.ops.state import StateStore

if TYPE_CHECKING:
    from provisioning.ops.infra import Infra

BUILTIN = {"local": "provisioning.ops.providers.local:LocalProvider"}
BUILTIN["upcloud"] = "provisioning.ops.providers.upcloud:UpCloudProvider"


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
