"""Component versions and the versions.toml compatibility check (DESIGN.md 9).

Range forms: exact "1.2.3" (or "=1.2.3"), caret "^3.2", tilde "~3.2.1",
comparisons ">=3.2", ">3.2", "<4", "<=4.1", "==3.2.1", a comma-separated
conjunction of those (">=3.2, <4"), and "*". `min-*` keys are lower bounds.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning import __version__ as CORE_VERSION
from provisioning import paths
from provisioning.errors import IncompatibleVersions, UsageError

PLATFORM_VERSION = "2.5.3"  # orchestrator
API_VERSION = "v1"

Version = tuple[int, int, int]
_VERSION_RE = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[-+].*)?\s*$")


def parse_version(text: str) -> Version:
    m = _VERSION_RE.match(text)
    if not m:
        raise UsageError(f"not a version: {text!r} (expected MAJOR.MINOR.PATCH)")
    return tuple(int(g or 0) for g in m.groups())  # type: ignore[return-value]


def _parts(text: str) -> int:
    m = _VERSION_RE.match(text)
    return sum(1 for g in m.groups() if g is not None) if m else 0


def _bump(v: Version, index: int) -> Version:
    out = list(v[:index]) + [v[index] + 1] + [0] * (2 - index)
    return tuple(out)  # type: ignore[return-value]


def _clause_ok(clause: str, v: Version) -> bool:
    clause = clause.strip()
    if clause in ("", "*"):
        return True
    for op in (">=", "<=", "==", ">", "<", "=", "^", "~"):
        if clause.startswith(op):
            base_text = clause[len(op):].strip()
            break
    else:
        op, base_text = "=", clause
    base = parse_version(base_text)
    if op in ("=", "=="):
        # "=3.2" matches any 3.2.x, like cargo; "=3.2.1" is exact
        n = _parts(base_text)
        return v[:n] == base[:n]
    if op == ">=":
        return v >= base
    if op == ">":
        return v > base
    if op == "<=":
        return v <= base
    if op == "<":
        return v < base
    if op == "^":
        # cargo/npm caret: the left-most non-zero part may not change
        if base[0] > 0 or _parts(base_text) == 1:
            upper = _bump(base, 0)
        elif base[1] > 0 or _parts(base_text) == 2:
            upper = _bump(base, 1)
        else:
            upper = _bump(base, 2)
        return base <= v < upper
    # "~": patch-level changes only if minor given, else minor-level
    upper = _bump(base, 1) if _parts(base_text) >= 2 else _bump(base, 0)
    return base <= v < upper


def satisfies(version: str, spec: str) -> bool:
    """True if `version` is in the range `spec` (clauses joined by commas = AND)."""
    v = parse_version(version)
    return all(_clause_ok(c, v) for c in spec.split(","))


@dataclass(frozen=True)
class Verdict:
    compatible: bool
    reason: str
    core: str
    platform: str
    required: str = ""

    def raise_if_incompatible(self) -> None:
        if not self.compatible:
            raise IncompatibleVersions(
                self.reason,
                hint="install matching core and platform bundles (see versions.toml)",
            )


def versions_file_candidates() -> list[Path]:
    found = [d / "versions.toml" for d in paths.share_dirs()]
    found.append(Path(__file__).resolve().parent / "versions.toml")
    env = os.environ.get("PROVISIONING_VERSIONS_FILE")
    return [Path(env)] if env else found


def load_matrix(path: Path | None = None) -> tuple[dict[str, Any], Path]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    candidates = [path] if path else versions_file_candidates()
    for p in candidates:
        if p.is_file():
            try:
                return tomllib.loads(p.read_text(encoding="utf-8")), p
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise UsageError(f"{p}: invalid versions.toml: {e}") from e
    raise UsageError("versions.toml not found in " + ", ".join(map(str, candidates)))


def check_compatibility(
    core: str = CORE_VERSION,
    platform: str = PLATFORM_VERSION,
    *,
    api: str = API_VERSION,
    matrix: dict[str, Any] | None = None,
) -> Verdict:
    """Decide whether `core` and `platform` may run together.

    Both sides are checked when the matrix has an entry for them: the
    platform's `core` range and `min-core`, the core's `platform` range and
    `min-platform`, and the API versions. A version with no entry at all is
    incompatible (we cannot vouch for it).
    """
    if matrix is None:
        matrix, _ = load_matrix()
    compat = matrix.get("compatibility", {})
    plat_entry = compat.get("platform", {}).get(platform)
    core_entry = compat.get("core", {}).get(core)

    if plat_entry is None and core_entry is None:
        return Verdict(False, f"neither core {core} nor platform {platform} is listed in "
                       "versions.toml", core, platform)
    sides = ((plat_entry, f"platform {platform}", "core", core, "api-version"),
             (core_entry, f"core {core}", "platform", platform, "orchestrator-api"))
    for entry, me, other, other_version, api_key in sides:
        if entry is None:
            continue
        problem = _entry_problem(entry, me, other, other_version, api, api_key)
        if problem is not None:
            return Verdict(False, problem[0], core, platform, problem[1])
    return Verdict(True, f"core {core} and platform {platform} are compatible", core, platform)


def _entry_problem(entry: dict[str, Any], me: str, other: str, other_version: str, api: str,
                   api_key: str) -> tuple[str, str] | None:
    """Why one side's matrix entry (``me``, e.g. "platform 2.5.3") refuses the
    ``other`` side at ``other_version`` and what it requires, or None: its
    ``<other>`` range, its ``min-<other>``, its API version (``api_key``)."""
    rng = entry.get(other, "*")
    if not satisfies(other_version, rng):
        return f"{me} requires {other} {rng}, found {other} {other_version}", rng
    minimum = entry.get(f"min-{other}")
    if minimum and parse_version(other_version) < parse_version(minimum):
        return (f"{me} requires {other} >= {minimum}, found {other} {other_version}",
                f">={minimum}")
    wanted = entry.get(api_key)
    if wanted and wanted != api:
        return f"{me} speaks API {wanted}, the {other} side has {api}", wanted
    return None


def version_info() -> dict[str, str]:
    return {"core_version": CORE_VERSION, "platform_version": PLATFORM_VERSION,
            "api_version": API_VERSION}


def format_versions(as_json: bool) -> str:
    """`provisioning version` output (shared by the fast path and the click command)."""
    info = version_info()
    if as_json:
        import json

        return json.dumps(info, indent=2, sort_keys=True) + "\n"
    return (f"core      {info['core_version']}\n"
            f"platform  {info['platform_version']}\n"
            f"api       {info['api_version']}\n")
