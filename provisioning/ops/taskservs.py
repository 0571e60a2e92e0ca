"""Taskserv definitions: where they are found, what they declare, their order.

A taskserv is a folder `<name>/` holding `taskserv.toml`, an `install`
executable that runs ON the server (POSIX sh is the norm: a host needs no
Python; `install.py` runs with the host's python3, `install.nu` with nu),
optionally `remove` and `check` the same way, and a `templates/` folder
(Jinja2, provisioning.ops.templates). docs/taskservs.md explains how to
write one. Folders are looked up, first hit wins, in:

  1. the workspace:        <workspace>/taskservs/<name>/
  2. each extension dir:   <lib>/taskservs/catalog/<name>/  (PROVISIONING_LIB, executor.lib_dirs)
  3. the package:          provisioning/lib/taskservs/catalog/<name>/

(`catalog/` keeps definitions apart from the op scripts `taskservs/create.py`
etc. that the op registry resolves in the same lib dirs.)

taskserv.toml:

  [taskserv]
  description = "..."
  requires = ["kvstore"]        # installed first on the same server
  [ports]                       # name -> port (the provider may offset it)
  http = 18080
  [health]                      # checked after install
  type = "http"                 # http | tcp (from the orchestrator to the address) | command
  port = "http"                 # a name from [ports] (http, tcp)
  path = "/"                    # http only
  argv = ["check"]              # command only: run on the server (default: the `check` script)
  send = "PING\\n"              # tcp only: bytes to send ...
  expect = "PONG"               # ... and a substring the reply (or page) must hold
  timeout_s = 20
  [templates]                   # file in templates/ -> path under the server root
  "index.html" = "srv/web/index.html"
  [defaults]                    # template values; the infra's [taskservs.<name>] overrides
  title = "hello"
"""

from __future__ import annotations

import os
import posixpath
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning import paths
from provisioning.config import current_lib_dirs
from provisioning.errors import ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEF_FILE = "taskserv.toml"
SCRIPT_SUFFIXES = ("", ".py", ".nu")  # the executable (sh) first
SECTIONS = {"taskserv", "ports", "health", "templates", "defaults"}
HEALTH_KEYS = {"type", "port", "path", "send", "expect", "timeout_s", "argv"}
HEALTH_TYPES = ("tcp", "http", "command")


@dataclass(frozen=True)
class TaskservDef:
    name: str
    dir: Path
    description: str = ""
    requires: tuple[str, ...] = ()
    ports: dict[str, int] = field(default_factory=dict)
    health: dict[str, Any] | None = None
    templates: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    def script(self, kind: str) -> Path | None:
        """The `install`, `remove` or `check` script, if any."""
        for suffix in SCRIPT_SUFFIXES:
            p = self.dir / f"{kind}{suffix}"
            if p.is_file():
                return p
        return None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "requires": list(self.requires), "ports": self.ports,
                "health": (self.health or {}).get("type"), "path": str(self.dir)}


def _parse_def(name: str, directory: Path) -> TaskservDef:
    file = directory / DEF_FILE
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValidationError(f"{file}: cannot read taskserv definition: {e}") from e
    for key in data:
        if key not in SECTIONS:
            raise ValidationError(f"{file}: unknown section [{key}]",
                                  hint=f"known: {', '.join(sorted(SECTIONS))}")
    head = data.get("taskserv", {})
    requires = head.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ValidationError(f"{file}: taskserv.requires must be a list of strings")
    ports = data.get("ports", {})
    for pname, port in ports.items():
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValidationError(f"{file}: ports.{pname} must be a port number, got {port!r}")
    health = data.get("health")
    if health is not None:
        for key in health:
            if key not in HEALTH_KEYS:
                raise ValidationError(f"{file}: health.{key}: unknown key",
                                      hint=f"known keys: {', '.join(sorted(HEALTH_KEYS))}")
        kind = health.get("type")
        if kind not in HEALTH_TYPES:
            raise ValidationError(f"{file}: health.type must be one of "
                                  f"{', '.join(HEALTH_TYPES)}, got {kind!r}")
        if kind == "command":
            argv = health.get("argv")
            if argv is None and not any((directory / f"check{s}").is_file()
                                        for s in SCRIPT_SUFFIXES):
                raise ValidationError(f"{file}: health.type = 'command' needs health.argv "
                                      "or a `check` script in the taskserv folder")
            if argv is not None and (not isinstance(argv, list) or not argv
                                     or not all(isinstance(a, str) for a in argv)):
                raise ValidationError(f"{file}: health.argv must be a non-empty list of "
                                      "strings")
        elif health.get("port") not in ports:
            raise ValidationError(f"{file}: health.port must name one of [ports] "
                                  f"({', '.join(ports) or 'none declared'})")
    templates = data.get("templates", {})
    for src in templates:
        if not (directory / "templates" / src).is_file():
            raise ValidationError(f"{file}: templates.\"{src}\": no file templates/{src}")
        dest = templates[src]
        if not isinstance(dest, str) or dest.startswith("/") or ".." in Path(dest).parts:
            raise ValidationError(f"{file}: templates.\"{src}\" must be a relative path "
                                  "inside the server root")
    return TaskservDef(name=name, dir=directory, description=head.get("description", ""),
                       requires=tuple(requires), ports=dict(ports), health=health,
                       templates=dict(templates), defaults=dict(data.get("defaults", {})))


def search_dirs(workspace: Path | None, extra: list[Path] | None = None) -> list[Path]:
    dirs: list[Path] = []
    if workspace is not None:
        dirs.append(workspace / "taskservs")
    for lib in (current_lib_dirs() if extra is None else extra):
        dirs.append(lib / "taskservs" / "catalog")
    dirs.append(paths.package_lib_dir() / "taskservs" / "catalog")
    return dirs


@dataclass
class Catalog:
    """Every taskserv visible from one workspace."""

    defs: dict[str, TaskservDef]

    @classmethod
    def load(cls, *, workspace: Path | None, lib_dirs: list[Path] | None = None) -> Catalog:
        defs: dict[str, TaskservDef] = {}
        for base in search_dirs(workspace, lib_dirs):
            if not base.is_dir():
                continue
            for d in sorted(base.iterdir()):
                if d.name not in defs and (d / DEF_FILE).is_file():
                    defs[d.name] = _parse_def(d.name, d)
        return cls(defs)

    def get(self, name: str) -> TaskservDef:
        if name not in self.defs:
            raise ValidationError(f"unknown taskserv '{name}'",
                                  hint=f"available: {', '.join(sorted(self.defs)) or 'none'}")
        return self.defs[name]

    def install_order(self, names: tuple[str, ...] | list[str], *, where: str = "") -> list[str]:
        """`names` plus everything they require, each after its requirements.

        A cycle is a ValidationError that prints it (a -> b -> a).
        """
        order: list[str] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done
        prefix = f"{where}: " if where else ""

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name):] + [name]
                raise ValidationError(
                    f"{prefix}taskserv dependency cycle: {' -> '.join(cycle)}",
                    hint=f"see requires in {self.defs[name].dir / DEF_FILE}")
            if name not in self.defs:
                who = f" (required by '{path[-1]}')" if path else ""
                raise ValidationError(f"{prefix}unknown taskserv '{name}'{who}",
                                      hint=f"available: {', '.join(sorted(self.defs))}")
            state[name] = 1
            for req in self.defs[name].requires:
                visit(req, path + [name])
            state[name] = 2
            order.append(name)

        for n in names:
            visit(n, [])
        return order


# -- template values and rendering -------------------------------------------

def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}_{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        out[prefix] = str(value)


def effective_ports(tdef: TaskservDef, overrides: dict[str, Any], offset: int) -> dict[str, int]:
    ports = dict(tdef.ports)
    extra = overrides.get("ports", {})
    if isinstance(extra, dict):
        ports.update({k: int(v) for k, v in extra.items() if k in ports})
    return {k: v + offset for k, v in ports.items()}


def template_values(*, infra: Any, server: dict[str, Any], tdef: TaskservDef,
                    ports: dict[str, int], required_ports: dict[str, dict[str, int]]
                    ) -> dict[str, str]:
    """Values a template sees: server and infra facts, ports, defaults and overrides."""
    values: dict[str, str] = {}
    _flat("setting", infra.settings, values)
    for k, v in server.get("labels", {}).items():
        values[f"label_{k}"] = str(v)
    values.update({
        "infra": infra.name, "provider": infra.provider, "taskserv": tdef.name,
        "hostname": server["hostname"], "address": server["address"],
        "server_root": server["root"], "zone": server.get("zone", ""),
        "plan": server.get("plan", ""),
    })
    for pname, port in ports.items():
        values[f"port_{pname}"] = str(port)
    for req, rports in required_ports.items():
        for pname, port in rports.items():
            values[f"{req}_port_{pname}"] = str(port)
    overrides = {k: v for k, v in infra.taskserv_settings.get(tdef.name, {}).items()
                 if k != "ports"}
    _flat("", {**tdef.defaults, **overrides}, values)
    return values


def render_template(tdef: TaskservDef, src: str, context: dict[str, Any]) -> str:
    """Render templates/<src> with Jinja2 (provisioning.ops.templates)."""
    # lazy: Jinja2 is loaded by the task process that renders, never on CLI start-up
    from provisioning.ops import templates

    return templates.render(tdef.dir / "templates", src, context)


def script_argv(script: str, *, python: str = "python3") -> list[str]:
    """How the server runs an install/remove/check script given by its path there:
    Python (`python`, the host's interpreter), Nushell, or an executable."""
    if script.endswith(".py"):
        return [python, script]
    if script.endswith(".nu"):
        return [os.environ.get("PROVISIONING_EXECUTOR_NUSHELL_BINARY", "nu"), script]
    return [script]


def deploy_dir(root: str, name: str) -> tuple[str, str]:
    """Where a taskserv's folder goes on a server: (relative to its root, absolute)."""
    rel = f"opt/provisioning/taskservs/{name}"
    return rel, posixpath.join(root or "/", rel)
