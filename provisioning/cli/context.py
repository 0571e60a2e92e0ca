"""State shared by every command: global options, config loaded on first use."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config is imported on first use: `version` never pays for it
    from provisioning.config import Config


@dataclass
class AppContext:
    config_file: str | None = None
    mode: str | None = None  # None: decided per command from config
    endpoint: str | None = None
    json_output: bool = False
    verbose: int = 0
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            # lazy: `provisioning version` (and --help) never load the config
            from provisioning.config import load_config

            self._config = load_config(self.config_file)
        return self._config

    def endpoint_url(self) -> str:
        return (self.endpoint or self.config.orchestrator.endpoint).rstrip("/")

    def emit_json(self, data: Any) -> None:
        """Machine-readable output: one JSON document on stdout."""
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    def log(self, message: str) -> None:
        """Human notes go to stderr so --json stdout stays parseable."""
        sys.stderr.write(message + "\n")

    def debug(self, message: str) -> None:
        if self.verbose:
            sys.stderr.write(f"debug: {message}\n")
