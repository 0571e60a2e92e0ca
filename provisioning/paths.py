"""Every directory and file location, in one place (pipx's paths.py is the model).

Root gets system locations (/var/lib/provisioning, /etc/provisioning,
/usr/local/share/provisioning); other users get platformdirs user dirs.
Environment overrides let tests and packagers move everything:

  PROVISIONING_SHARE_DIR        system share dir (config defaults, versions.toml)
  PROVISIONING_ETC_DIR          system config dir
  PROVISIONING_USER_CONFIG_DIR  user config dir
  PROVISIONING_LIB              extension (business logic) dirs, os.pathsep-separated

The data dir itself comes from config (`storage.data_dir`, which the env layer
PROVISIONING_STORAGE_DATA_DIR can set); see Config.paths().
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

APP = "provisioning"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_data_dir() -> Path:
    if is_root():
        return Path("/var/lib/provisioning")
    import platformdirs

    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def _install_prefix() -> Path | None:
    """The prefix we were installed under (<prefix>/bin/provisioning), if any."""
    exe = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if exe is None or exe.parent.name != "bin":
        return None
    try:
        return exe.resolve().parent.parent
    except OSError:
        return None


def share_dirs() -> list[Path]:
    """System share dirs, most general first."""
    env = os.environ.get("PROVISIONING_SHARE_DIR")
    if env:
        return [Path(env)]
    dirs = [Path("/usr/local/share/provisioning")]
    prefix = _install_prefix()
    if prefix is not None and (prefix / "share" / APP) not in dirs:
        dirs.append(prefix / "share" / APP)
    return dirs


def etc_dir() -> Path:
    return Path(os.environ.get("PROVISIONING_ETC_DIR", "/etc/provisioning"))


def user_config_dir() -> Path:
    env = os.environ.get("PROVISIONING_USER_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def system_config_files() -> list[Path]:
    files = [d / "config" / "config.defaults.toml" for d in share_dirs()]
    files.append(etc_dir() / "config.toml")
    return files


def user_config_file() -> Path:
    return user_config_dir() / "config.toml"


def workspace_config_file() -> Path:
    return Path.cwd() / "provisioning.toml"


def env_lib_dirs() -> list[Path]:
    raw = os.environ.get("PROVISIONING_LIB", "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def package_lib_dir() -> Path:
    """Business logic shipped inside the package (taskservs, providers)."""
    return Path(__file__).resolve().parent / "lib"


@dataclass(frozen=True)
class DataPaths:
    """Layout of the data dir (DESIGN.md 7)."""

    data_dir: Path

    @property
    def queue_dir(self) -> Path:  # one JSON file per task
        return self.data_dir / "queue"

    @property
    def workflows_dir(self) -> Path:  # one JSON file per workflow
        return self.data_dir / "workflows"

    @property
    def events_dir(self) -> Path:  # one append-only JSONL event log per workflow
        return self.data_dir / "events"

    @property
    def logs_dir(self) -> Path:  # captured task output, logs/<workflow>/<task>.log
        return self.data_dir / "logs"

    @property
    def checkpoints_dir(self) -> Path:  # PROVISIONING_CHECKPOINT files
        return self.data_dir / "checkpoints"

    @property
    def quarantine_dir(self) -> Path:  # corrupt or foreign queue files
        return self.data_dir / "quarantine"

    @property
    def state_dir(self) -> Path:  # business-logic state (servers, taskservs)
        return self.data_dir / "state"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "orchestrator.pid"

    @property
    def daemon_lock(self) -> Path:  # held by the daemon for its whole life
        return self.data_dir / "orchestrator.lock"

    @property
    def spawn_lock(self) -> Path:  # held by a CLI while it auto-starts the daemon
        return self.data_dir / "spawn.lock"

    @property
    def daemon_log(self) -> Path:
        return self.data_dir / "orchestrator.log"
