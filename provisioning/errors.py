"""The one exception type for expected failures, and the exit codes of DESIGN.md 3.

Anything raised as ProvisioningError is shown to the user as a message (no
traceback unless -v) and turned into its exit code at the CLI's top level.
Anything else is a bug: it is re-raised with its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and failed
EXIT_USAGE = 2  # usage or input error (bad file, bad config, unknown infra)
EXIT_UNAVAILABLE = 3  # orchestrator unavailable and no fallback
EXIT_INCOMPATIBLE = 4  # versions incompatible
EXIT_INTERRUPTED = 130


class ProvisioningError(Exception):
    """An expected failure: a message for the operator and an exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, exit_code: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def render(self, *, color: bool = False) -> str:
        """The text to show; `color` (a terminal) lets a subclass keep ANSI styling."""
        return str(self)


class UsageError(ProvisioningError):
    """Bad input: a file, a key, an argument. Exit 2."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """Invalid configuration (file, key and, where known, line). Exit 2."""


class ValidationError(UsageError):
    """A workflow or infra definition that cannot run. Exit 2."""


class OrchestratorUnavailable(ProvisioningError):
    """The daemon cannot be reached and there is no fallback. Exit 3."""

    exit_code = EXIT_UNAVAILABLE


START_HINT = "start it with `provisioning orchestrator start`, or run with --direct"


class Unreachable(OrchestratorUnavailable):
    """No answer at all. `delivered` is False when the request surely never
    reached a daemon (connection refused), so running it elsewhere is safe."""

    def __init__(self, message: str, *, delivered: bool, hint: str | None = START_HINT):
        super().__init__(message, hint=hint)
        self.delivered = delivered


class IncompatibleVersions(ProvisioningError):
    """Core and platform versions do not fit versions.toml. Exit 4."""

    exit_code = EXIT_INCOMPATIBLE


class NotFound(ProvisioningError):
    """No such workflow, task or server. HTTP 404; exit 2 at the CLI."""

    exit_code = EXIT_USAGE
    http_status = 404


class Conflict(ProvisioningError):
    """The request does not fit the current state (e.g. retry of a running workflow). 409."""

    exit_code = EXIT_USAGE
    http_status = 409


class ServiceUnavailable(ProvisioningError):
    """The daemon is draining (SIGTERM) and takes no new work. HTTP 503."""

    http_status = 503


class StorageFull(ProvisioningError):
    """The data dir has no space left; nothing was accepted. HTTP 507."""

    http_status = 507


def http_status_of(error: ProvisioningError) -> int:
    """HTTP status for an expected failure: 400 for input errors unless the type says."""
    status = getattr(error, "http_status", None)
    if status:
        return status
    return 400 if error.exit_code == EXIT_USAGE else 500


class TransportError(ProvisioningError):
    """A host cannot be reached or refused us over SSH (provisioning.transport):
    the message names the host and the plain reason."""
