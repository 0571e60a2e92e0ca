"""Layered TOML configuration (DESIGN.md 8).

Layers, later wins: built-in defaults < system files < user file <
workspace ./provisioning.toml < --config FILE < PROVISIONING_<SECTION>_<KEY>.

The schema is the dataclasses below: a field's type is the type a value must
have, its default the built-in default. Unknown keys and wrong types are
reported with the file, the key and (when it can be found) the line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioning import paths
from provisioning.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class OrchestratorConfig:
    enabled: bool = True
    endpoint: str = "http://localhost:9090"
    timeout_seconds: int = 60
    auto_start: bool = True
    fallback_to_direct: bool = True
    start_timeout_seconds: int = 15  # how long auto-start waits for /health


@dataclass(frozen=True)
class ExecutionConfig:
    default_mode: str = "auto"  # direct | orchestrated | auto
    force_orchestrated: list[str] = field(
        default_factory=lambda: ["server.create", "cluster.create", "batch.*", "workflow.*"]
    )
    force_direct: list[str] = field(
        default_factory=lambda: ["*.list", "*.show", "help", "version"]
    )


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9090
    allow_remote: bool = False  # a non-loopback bind needs this set explicitly
    allowed_hosts: list[str] = field(default_factory=list)  # extra exact Host names
    max_body_bytes: int = 1_048_576
    request_timeout_seconds: int = 10
    max_connections: int = 64
    ui: bool = True  # the dashboard at /ui/ (DESIGN.md 16)
    ui_session_idle_seconds: int = 3600  # a dashboard session ends after this long unused


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "filesystem"
    data_dir: str = ""  # empty: /var/lib/provisioning as root, else the user data dir
    allow_network_fs: bool = False  # flock is unreliable on NFS; refuse unless set
    writer_process: bool = True  # daemon: record writes in a child (store/writer.py)
    # backend "postgres" (DESIGN.md 15): a libpq DSN ("host=... dbname=..." or a
    # postgresql:// URI); empty: libpq's PG* environment variables alone
    postgres_dsn: str = field(default="", repr=False)  # may hold a password
    # several daemons on one database, each owning whole workflows under a lease
    # it renews (README "Running several orchestrators"); false: one daemon only
    postgres_shared: bool = False
    postgres_lease_seconds: float = 15.0  # a dead daemon's workflows move after this


@dataclass(frozen=True)
class ExecutorConfig:
    max_concurrent_tasks: int = 10
    task_timeout_seconds: int = 3600
    checkpoint_interval_seconds: int = 30
    kill_grace_seconds: int = 5  # SIGTERM -> SIGKILL on timeout or cancel
    shutdown_grace_seconds: int = 30  # SIGTERM of the daemon: let tasks finish
    lib_dirs: list[str] = field(default_factory=list)  # extension dirs after PROVISIONING_LIB
    nushell_binary: str = "nu"
    # Python ops forked from a pre-imported helper of the daemon (engine/zygote.py);
    # Linux only, the daemon only. Preload: modules imported in it when importable.
    python_zygote: bool = True
    python_zygote_preload: list[str] = field(default_factory=lambda: ["boto3"])


@dataclass(frozen=True)
class Config:
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # "section.key" -> where the value came from ("default", a path, "env NAME")
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    files: list[tuple[str, Path, bool]] = field(default_factory=list, compare=False, repr=False)

    def data_paths(self) -> paths.DataPaths:
        return paths.DataPaths(Path(self.storage.data_dir).expanduser())

    def lib_dirs(self) -> list[Path]:
        """Extension dirs in lookup order: PROVISIONING_LIB, then config lib_dirs.

        The one definition of that order; `current_lib_dirs()` is the same for
        code with no Config in hand. Each user puts the package's own lib dir
        where its lookup needs it (ops registry and providers: built-ins
        first; taskservs: the workspace's, these, then the shipped ones)."""
        dirs = paths.env_lib_dirs() + [Path(d).expanduser() for d in self.executor.lib_dirs]
        return list(dict.fromkeys(dirs))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every section as plain values, for showing: a DSN's password is masked."""
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) for f in _sections()}
        out["storage"]["postgres_dsn"] = redact_dsn(out["storage"]["postgres_dsn"])
        return out


VALID_MODES = ("auto", "direct", "orchestrated")
MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
STORAGE_BACKENDS = ("filesystem", "postgres")
_CHOICES = {("execution", "default_mode"): VALID_MODES, ("storage", "backend"): STORAGE_BACKENDS}
_DSN_PASSWORD_KV = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_DSN_PASSWORD_URI = re.compile(r"^(\w+://[^/?#@]*?:)([^/?#@]*)(@)")


def redact_dsn(dsn: str) -> str:
    """A libpq DSN fit to show or log: the password of either form (key=value
    or postgresql://user:pw@host) and a password= URI parameter become ***."""
    if not dsn:
        return dsn
    out = _DSN_PASSWORD_URI.sub(r"\1***\3", dsn)
    out = re.sub(r"([?&]password=)[^&#]*", r"\1***", out, flags=re.IGNORECASE)
    return _DSN_PASSWORD_KV.sub(r"\1***", out) if "://" not in out else out


def _sections() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if f.name not in ("sources", "files")]


def _section_types() -> dict[str, type]:
    return {f.name: f.default_factory for f in _sections()}  # type: ignore[misc]


def _field_types(section_cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(section_cls)}


def _type_name(type_str: str) -> str:
    return {"list[str]": "a list of strings", "bool": "a boolean", "int": "an integer",
            "str": "a string", "float": "a number"}.get(type_str, type_str)


def _check_value(type_str: str, value: Any) -> bool:
    if type_str == "bool":
        return isinstance(value, bool)
    if type_str == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_str == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_str == "str":
        return isinstance(value, str)
    if type_str == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return False


def _find_line(text: str, section: str, key: str | None) -> int | None:
    """Best-effort line number of `key` inside `[section]` (or of the section)."""
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^\[\s*([A-Za-z0-9_.\-\"]+)\s*\]", stripped)
        if m:
            current = m.group(1).strip('"')
            if key is None and current == section:
                return n
            continue
        if key is not None and current == section and re.match(
            rf"^\"?{re.escape(key)}\"?\s*=", stripped
        ):
            return n
    return None


def _where(origin: str, text: str | None, section: str, key: str | None) -> str:
    line = _find_line(text, section, key) if text else None
    return f"{origin}:{line}" if line else origin


def _validate_layer(data: dict[str, Any], origin: str, text: str | None) -> None:
    sections = _section_types()
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(
                f"{_where(origin, text, section, None)}: unknown section [{section}]",
                hint=f"known sections: {', '.join(sections)}",
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        types = _field_types(sections[section])
        for key, value in values.items():
            if key not in types:
                close = [k for k in types if k.startswith(key[:3])] or list(types)
                raise ConfigError(
                    f"{_where(origin, text, section, key)}: unknown key '{key}' in [{section}]",
                    hint=f"known keys: {', '.join(close)}",
                )
            if not _check_value(types[key], value):
                raise ConfigError(
                    f"{_where(origin, text, section, key)}: {section}.{key} must be "
                    f"{_type_name(types[key])}, got {json.dumps(value, default=str)}"
                )
            choices = _CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(
                    f"{_where(origin, text, section, key)}: {section}.{key} must be one of "
                    f"{', '.join(choices)}, got {value!r}"
                )


def read_toml_file(path: Path) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; errors name the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file: {e}") from e
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e


def _parse_env_value(type_str: str, raw: str, name: str) -> Any:
    if type_str == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"environment {name}: expected true/false, got {raw!r}")
    if type_str == "int":
        try:
            return int(raw.strip())
        except ValueError:
            raise ConfigError(f"environment {name}: expected an integer, got {raw!r}") from None
    if type_str == "list[str]":
        raw = raw.strip()
        if raw.startswith("["):
            try:
                value = json.loads(raw)
            except ValueError:
                raise ConfigError(f"environment {name}: invalid JSON list {raw!r}") from None
            if not _check_value("list[str]", value):
                raise ConfigError(f"environment {name}: expected a list of strings")
            return value
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _env_layer(environ: dict[str, str]) -> dict[str, dict[str, tuple[Any, str]]]:
    out: dict[str, dict[str, tuple[Any, str]]] = {}
    for section, cls in _section_types().items():
        prefix = f"PROVISIONING_{section.upper()}_"
        types = _field_types(cls)
        for name, raw in environ.items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix):].lower()
            if key not in types:
                raise ConfigError(
                    f"environment {name}: unknown key '{key}' in [{section}]",
                    hint=f"known keys: {', '.join(types)}",
                )
            value = _parse_env_value(types[key], raw, name)
            choices = _CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(f"environment {name}: must be one of {', '.join(choices)}, "
                                  f"got {value!r}")
            out.setdefault(section, {})[key] = (value, f"env {name}")
    return out


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the merged Config. Raises ConfigError (exit 2) on any bad layer."""
    environ = dict(os.environ if environ is None else environ)
    merged: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for f in _sections():
        for key, value in dataclasses.asdict(f.default_factory()).items():  # type: ignore[misc]
            merged.setdefault(f.name, {})[key] = value
            sources[f"{f.name}.{key}"] = "default"

    layers: list[tuple[str, Path]] = [("system", p) for p in paths.system_config_files()]
    layers.append(("user", paths.user_config_file()))
    layers.append(("workspace", paths.workspace_config_file()))
    explicit = config_file or environ.get("PROVISIONING_CONFIG")
    if explicit:
        layers.append(("--config", Path(explicit)))

    files: list[tuple[str, Path, bool]] = []
    for layer, path in layers:
        exists = path.is_file()
        files.append((layer, path, exists))
        if not exists:
            if layer == "--config":
                raise ConfigError(f"{path}: config file not found")
            continue
        data, text = read_toml_file(path)
        _validate_layer(data, str(path), text)
        for section, values in data.items():
            for key, value in values.items():
                merged[section][key] = value
                sources[f"{section}.{key}"] = str(path)

    for section, values in _env_layer(environ).items():
        for key, (value, origin) in values.items():
            merged[section][key] = value
            sources[f"{section}.{key}"] = origin

    if not merged["storage"]["data_dir"]:
        merged["storage"]["data_dir"] = str(paths.default_data_dir())
    _check_ranges(merged, sources)
    kwargs = {name: cls(**merged[name]) for name, cls in _section_types().items()}
    return Config(**kwargs, sources=sources, files=files)


def _check_ranges(merged: dict[str, dict[str, Any]], sources: dict[str, str]) -> None:
    positive = [("executor", "max_concurrent_tasks"), ("executor", "task_timeout_seconds"),
                ("orchestrator", "timeout_seconds"), ("server", "max_body_bytes"),
                ("server", "request_timeout_seconds"), ("server", "max_connections"),
                ("server", "ui_session_idle_seconds")]
    for section, key in positive:
        if merged[section][key] < 1:
            raise ConfigError(
                f"{sources[f'{section}.{key}']}: {section}.{key} must be at least 1, "
                f"got {merged[section][key]}"
            )
    for name in merged["executor"]["python_zygote_preload"]:
        if not MODULE_NAME_RE.match(name):
            raise ConfigError(
                f"{sources['executor.python_zygote_preload']}: executor.python_zygote_preload "
                f"must list module names (like 'boto3'), got {name!r}")
    port = merged["server"]["port"]
    if not 0 <= port <= 65535:
        raise ConfigError(f"{sources['server.port']}: server.port must be 0-65535, got {port}")


def current_lib_dirs() -> list[Path]:
    """Config.lib_dirs() of the config this process would load (ops in task
    processes have no Config in hand); PROVISIONING_LIB alone when that config
    does not load: a bad config is the CLI's to report, not a task's."""
    try:
        return load_config().lib_dirs()
    except ConfigError:
        return list(dict.fromkeys(paths.env_lib_dirs()))


def validate_file(path: str | os.PathLike[str]) -> None:
    """Check one config file on its own (for `config validate FILE`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    data, text = read_toml_file(p)
    _validate_layer(data, str(p), text)
