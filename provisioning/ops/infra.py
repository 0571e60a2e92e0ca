"""Workspaces and infra definitions: find them, load them, validate them.

A workspace is a directory holding `infra/<name>/settings.toml` (or
`settings.ncl`, evaluated by provisioning.nickel with the shipped contracts) and,
optionally, `taskservs/<name>/` folders of its own. An infra is found from
`--infra NAME|PATH`, else `PROVISIONING_WORKSPACE`, else the current
directory and its parents.

Every problem is a ValidationError (exit 2) naming the file and the key, and
nothing is created before an infra validates.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning.errors import UsageError, ValidationError
from provisioning.ops import providers, taskservs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SETTINGS_FILES = ("settings.toml", "settings.ncl")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

TOP_KEYS = {"infra", "provider", "settings", "taskservs", "servers", "clusters"}
INFRA_KEYS = {"name": str, "provider": str, "description": str}
# How to reach an existing host (the ssh provider, DESIGN.md 12): ServerDef.connection.
HOST_KEYS = {"address": str, "port": int, "host_key": str, "root": str, "user": str,
             "identity_file": str}
SERVER_KEYS = {"hostname": str, "plan": str, "zone": str, "taskservs": list, "labels": dict,
               **HOST_KEYS}
CLUSTER_KEYS = {"servers": list, "description": str}


@dataclass(frozen=True)
class ServerDef:
    hostname: str
    plan: str = "small"
    zone: str = "local"
    taskservs: tuple[str, ...] = ()  # as declared; see Infra.taskserv_plan for the order
    labels: dict[str, str] = field(default_factory=dict)
    connection: dict[str, Any] = field(default_factory=dict)  # HOST_KEYS given


@dataclass(frozen=True)
class ClusterDef:
    name: str
    servers: tuple[str, ...]
    description: str = ""


@dataclass
class Infra:
    name: str
    dir: Path  # absolute
    file: Path  # the settings file it was read from
    provider: str
    provider_settings: dict[str, Any]
    settings: dict[str, Any]
    taskserv_settings: dict[str, dict[str, Any]]
    servers: tuple[ServerDef, ...]
    clusters: dict[str, ClusterDef]
    description: str = ""
    catalog: Any = None  # taskservs.Catalog

    @property
    def workspace(self) -> Path | None:
        return self.dir.parent.parent if self.dir.parent.name == "infra" else None

    def server(self, hostname: str) -> ServerDef:
        for s in self.servers:
            if s.hostname == hostname:
                return s
        known = ", ".join(s.hostname for s in self.servers) or "none"
        raise ValidationError(f"{self.file}: server '{hostname}' is not defined in infra "
                              f"'{self.name}'", hint=f"servers: {known}")

    def taskserv_plan(self, hostname: str) -> list[str]:
        """The server's taskservs plus what they require, dependencies first."""
        return self.catalog.install_order(self.server(hostname).taskservs)

    def cluster(self, name: str) -> ClusterDef:
        if name in self.clusters:
            return self.clusters[name]
        if not self.clusters and name == self.name:  # no clusters declared: the whole infra
            return ClusterDef(name, tuple(s.hostname for s in self.servers))
        known = ", ".join(self.clusters) or f"none (use '{self.name}' for the whole infra)"
        raise ValidationError(f"{self.file}: cluster '{name}' is not defined in infra "
                              f"'{self.name}'", hint=f"clusters: {known}")

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.dir), "provider": self.provider,
                "servers": [s.hostname for s in self.servers],
                "clusters": sorted(self.clusters)}


# -- finding ----------------------------------------------------------------

def find_workspace(start: Path | None = None) -> Path | None:
    """PROVISIONING_WORKSPACE, else the nearest directory (cwd or a parent) with infra/."""
    env = os.environ.get("PROVISIONING_WORKSPACE")
    if env:
        return Path(env).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "infra").is_dir():
            return d
    return None


def _settings_file(directory: Path) -> Path | None:
    for name in SETTINGS_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def resolve_infra(ref: str | None, *, cwd: Path | None = None) -> Path:
    """The absolute directory of an infra given as a name, a path, or nothing."""
    cwd = cwd or Path.cwd()
    workspace = find_workspace(cwd)
    if ref is None:
        names = list_infras(workspace) if workspace else []
        if len(names) == 1:
            return (workspace / "infra" / names[0]).resolve()
        raise UsageError("no infra given", hint="pass --infra NAME|PATH"
                         + (f" (infras in {workspace}: {', '.join(names)})" if names else ""))
    candidate = Path(ref).expanduser()
    if not candidate.is_absolute():
        candidate = cwd / candidate
    try:
        if candidate.is_file() and candidate.name in SETTINGS_FILES:
            return candidate.parent.resolve()
        if candidate.is_dir() and _settings_file(candidate):
            return candidate.resolve()
    except OSError:  # ENAMETOOLONG, EACCES...: not an infra we can use (API input: no 500)
        pass
    looked = [str(candidate)]
    if NAME_RE.match(ref) and workspace is not None:
        by_name = workspace / "infra" / ref
        if _settings_file(by_name):
            return by_name.resolve()
        looked.append(str(by_name))
    hint = "set PROVISIONING_WORKSPACE or run from a workspace (a directory with infra/)"
    if workspace is not None:
        hint = f"infras in {workspace}: {', '.join(list_infras(workspace)) or 'none'}"
    raise UsageError(f"unknown infra '{ref}' (looked in {', '.join(looked)})", hint=hint)


def list_infras(workspace: Path) -> list[str]:
    base = workspace / "infra"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and _settings_file(p))


# -- loading ----------------------------------------------------------------

def _read_settings(file: Path, validate: Callable[[Any], object] | None = None
                   ) -> dict[str, Any]:
    """The settings file's data; `validate` lists the problems after a contract error."""
    if file.suffix == ".ncl":
        from provisioning import nickel  # lazy: start-up of commands without .ncl files

        data = nickel.export(file, validate=validate)
    else:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ValidationError(f"{file}: cannot read: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ValidationError(f"{file}: invalid TOML: {e}") from e
    if not isinstance(data, dict):
        raise ValidationError(f"{file}: the top level must be a table")
    return data


_TYPE_NAMES = {str: "a string", list: "a list", dict: "a table", int: "an integer"}


def _check_table(file: Path, where: str, table: Any, allowed: dict[str, type]) -> None:
    if not isinstance(table, dict):
        raise ValidationError(f"{file}: {where} must be a table")
    for key, value in table.items():
        if key not in allowed:
            raise ValidationError(f"{file}: {where}.{key}: unknown key",
                                  hint=f"known keys: {', '.join(allowed)}")
        if not isinstance(value, allowed[key]):
            raise ValidationError(f"{file}: {where}.{key} must be {_TYPE_NAMES[allowed[key]]}, "
                                  f"got {json.dumps(value, default=str)}")


def _str_list(file: Path, where: str, value: list) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{file}: {where} must be a list of strings")
    return tuple(value)


def load_infra(ref: str | os.PathLike[str] | None, *, lib_dirs: list[Path] | None = None
               ) -> Infra:
    """Find, read and validate an infra. Raises ValidationError / UsageError (exit 2)."""
    directory = resolve_infra(None if ref is None else str(ref))
    file = _settings_file(directory)
    assert file is not None  # resolve_infra checked

    def validate(data: Any) -> Infra:
        return parse_infra(data, directory=directory, file=file, lib_dirs=lib_dirs)

    return validate(_read_settings(file, validate))


def parse_infra(data: dict[str, Any], *, directory: Path, file: Path,
                lib_dirs: list[Path] | None = None) -> Infra:
    for key in data:
        if key not in TOP_KEYS:
            raise ValidationError(f"{file}: unknown top-level key '{key}'",
                                  hint=f"known keys: {', '.join(sorted(TOP_KEYS))}")
    head = data.get("infra", {})
    _check_table(file, "[infra]", head, INFRA_KEYS)
    name = head.get("name", directory.name)
    if not NAME_RE.match(name):
        raise ValidationError(f"{file}: infra.name '{name}' must be letters, digits, '-' or '_'")
    provider = head.get("provider")
    if not provider:
        raise ValidationError(f"{file}: [infra] provider is missing",
                              hint='add provider = "local" under [infra]')

    provider_cls = providers.provider_class(provider, lib_dirs=lib_dirs, where=str(file))
    provider_settings = data.get("provider", {})
    if not isinstance(provider_settings, dict):
        raise ValidationError(f"{file}: [provider] must be a table")
    for problem in provider_cls.validate_settings(provider_settings):
        raise ValidationError(f"{file}: [provider] {problem}")

    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise ValidationError(f"{file}: [settings] must be a table")
    ts_settings = data.get("taskservs", {})
    if not isinstance(ts_settings, dict) or not all(isinstance(v, dict)
                                                     for v in ts_settings.values()):
        raise ValidationError(f"{file}: [taskservs] must hold one table per taskserv, "
                              "e.g. [taskservs.web]")

    workspace = directory.parent.parent if directory.parent.name == "infra" else None
    catalog = taskservs.Catalog.load(workspace=workspace, lib_dirs=lib_dirs)

    servers, seen = _parse_servers(file, data.get("servers", []), catalog)
    check_server = getattr(provider_cls, "validate_server", None)  # providers of real hosts
    for i, server in enumerate(servers if check_server else ()):
        for problem in check_server(server.connection):
            raise ValidationError(f"{file}: servers[{i}] ({server.hostname}): {problem}")
    for ts_name in ts_settings:
        if ts_name not in catalog.defs:
            raise ValidationError(f"{file}: [taskservs.{ts_name}]: unknown taskserv '{ts_name}'",
                                  hint=f"available: {', '.join(sorted(catalog.defs))}")

    clusters = _parse_clusters(file, data.get("clusters", {}), servers, seen)
    return Infra(name=name, dir=directory, file=file, provider=provider,
                 provider_settings=dict(provider_settings), settings=dict(settings),
                 taskserv_settings={k: dict(v) for k, v in ts_settings.items()},
                 servers=tuple(servers), clusters=clusters,
                 description=head.get("description", ""), catalog=catalog)


def _parse_servers(file: Path, raw_servers: Any, catalog: Any
                   ) -> tuple[list[ServerDef], dict[str, int]]:
    """The [[servers]] tables, checked; and each hostname's index (for messages)."""
    if not isinstance(raw_servers, list) or not all(isinstance(s, dict) for s in raw_servers):
        raise ValidationError(f"{file}: servers must be an array of tables ([[servers]])")
    servers: list[ServerDef] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_servers):
        where = f"servers[{i}]"
        _check_table(file, where, raw, SERVER_KEYS)
        host = raw.get("hostname")
        if not host:
            raise ValidationError(f"{file}: {where}.hostname is missing")
        if not HOSTNAME_RE.match(host):
            raise ValidationError(f"{file}: {where}.hostname '{host}' is not a valid hostname "
                                  "(letters, digits and '-', at most 63)")
        if host in seen:
            raise ValidationError(f"{file}: {where}.hostname: duplicate hostname '{host}' "
                                  f"(also servers[{seen[host]}])")
        seen[host] = i
        names = _str_list(file, f"{where}.taskservs", raw.get("taskservs", []))
        for ts in names:
            if ts not in catalog.defs:
                raise ValidationError(
                    f"{file}: {where}.taskservs: unknown taskserv '{ts}' (server '{host}')",
                    hint=f"available taskservs: {', '.join(sorted(catalog.defs)) or 'none'}")
        catalog.install_order(names, where=f"{file}: {where}.taskservs")  # cycles -> error
        labels = raw.get("labels", {})
        if not all(isinstance(v, str) for v in labels.values()):
            raise ValidationError(f"{file}: {where}.labels values must be strings")
        servers.append(ServerDef(hostname=host, plan=raw.get("plan", "small"),
                                 zone=raw.get("zone", "local"), taskservs=names,
                                 labels=dict(labels),
                                 connection={k: raw[k] for k in HOST_KEYS if k in raw}))
    return servers, seen


def _parse_clusters(file: Path, raw_clusters: Any, servers: list[ServerDef],
                    seen: dict[str, int]) -> dict[str, ClusterDef]:
    """The [clusters.NAME] tables, checked against the servers."""
    if not isinstance(raw_clusters, dict):
        raise ValidationError(f"{file}: [clusters] must hold one table per cluster")
    clusters: dict[str, ClusterDef] = {}
    for cname, raw in raw_clusters.items():
        where = f"clusters.{cname}"
        if not NAME_RE.match(cname):
            raise ValidationError(f"{file}: [{where}]: invalid cluster name")
        _check_table(file, f"[{where}]", raw, CLUSTER_KEYS)
        members = _str_list(file, f"{where}.servers",
                            raw.get("servers", [s.hostname for s in servers]))
        for m in members:
            if m not in seen:
                raise ValidationError(f"{file}: {where}.servers: unknown server '{m}'",
                                      hint=f"servers: {', '.join(seen) or 'none'}")
        clusters[cname] = ClusterDef(cname, members, raw.get("description", ""))
    return clusters
