"""versions.toml: every range form, both directions, missing entries."""

from __future__ import annotations

import json

import pytest

from provisioning.errors import IncompatibleVersions
from provisioning.versions import (
    API_VERSION,
    CORE_VERSION,
    PLATFORM_VERSION,
    check_compatibility,
    load_matrix,
    satisfies,
)
from tests.conftest import run_cli


@pytest.mark.parametrize("version,spec,ok", [
    ("3.2.0", "^3.2", True), ("3.9.9", "^3.2", True), ("4.0.0", "^3.2", False),
    ("3.1.9", "^3.2", False), ("0.2.9", "^0.2", True), ("0.3.0", "^0.2", False),
    ("0.0.3", "^0.0.3", True), ("0.0.4", "^0.0.3", False),
    ("3.2.7", "~3.2.1", True), ("3.3.0", "~3.2.1", False), ("3.2.0", "~3.2.1", False),
    ("3.9.0", "~3", True), ("4.0.0", "~3", False),
    ("3.2.0", ">=3.2", True), ("3.1.0", ">=3.2", False), ("3.2.1", ">3.2.0", True),
    ("4.0.0", "<4", False), ("3.99.0", "<4", True), ("4.1.0", "<=4.1", True),
    ("3.5.0", ">=3.2, <4", True), ("4.0.0", ">=3.2, <4", False),
    ("3.2.1", "3.2.1", True), ("3.2.2", "=3.2.1", False), ("3.2.2", "=3.2", True),
    ("9.9.9", "*", True),
])
def test_range_forms(version, spec, ok):
    assert satisfies(version, spec) is ok


def test_shipped_matrix_accepts_shipped_versions():
    matrix, path = load_matrix()
    assert path.name == "versions.toml"
    verdict = check_compatibility(CORE_VERSION, PLATFORM_VERSION, matrix=matrix)
    assert verdict.compatible, verdict.reason


MATRIX = {"compatibility": {
    "platform": {"2.5.3": {"core": "^3.2", "min-core": "3.2.0", "api-version": "v1"}},
    "core": {"3.2.1": {"platform": "^2.5", "min-platform": "2.5.0", "orchestrator-api": "v1"}},
}}


def test_core_outside_platform_range_names_both_versions_and_range():
    v = check_compatibility("4.0.0", "2.5.3", matrix=MATRIX)
    assert not v.compatible
    assert "4.0.0" in v.reason and "2.5.3" in v.reason and "^3.2" in v.reason
    with pytest.raises(IncompatibleVersions) as err:
        v.raise_if_incompatible()
    assert err.value.exit_code == 4


def test_platform_outside_core_range():
    v = check_compatibility("3.2.1", "3.0.0", matrix=MATRIX)
    assert not v.compatible and "^2.5" in v.reason


def test_min_keys_are_lower_bounds():
    matrix = {"compatibility": {"platform": {"2.5.3": {"core": "*", "min-core": "3.2.5"}}}}
    v = check_compatibility("3.2.1", "2.5.3", matrix=matrix)
    assert not v.compatible and ">= 3.2.5" in v.reason
    matrix = {"compatibility": {"core": {"3.2.1": {"platform": "*", "min-platform": "2.6"}}}}
    assert not check_compatibility("3.2.1", "2.5.3", matrix=matrix).compatible


def test_api_mismatch():
    matrix = {"compatibility": {"platform": {"2.5.3": {"core": "^3", "api-version": "v2"}}}}
    v = check_compatibility("3.2.1", "2.5.3", api=API_VERSION, matrix=matrix)
    assert not v.compatible and "v2" in v.reason


def test_missing_entries_are_incompatible():
    v = check_compatibility("9.0.0", "9.0.0", matrix=MATRIX)
    assert not v.compatible and "is listed in versions.toml" in v.reason


def test_one_sided_entry_is_enough():
    # a newer core not listed yet, but inside the platform's range
    assert check_compatibility("3.2.9", "2.5.3", matrix=MATRIX).compatible


def test_share_dir_versions_file_wins(isolated, tmp_path):
    from pathlib import Path
    share = Path(isolated["PROVISIONING_SHARE_DIR"])
    share.mkdir(parents=True)
    (share / "versions.toml").write_text('[compatibility.platform."2.5.3"]\ncore = "^9"\n')
    matrix, path = load_matrix()
    assert path == share / "versions.toml"
    assert not check_compatibility(matrix=matrix).compatible


def test_cli_version_json():
    res = run_cli("version", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"core_version": CORE_VERSION,
                                      "platform_version": PLATFORM_VERSION,
                                      "api_version": API_VERSION}
    res = run_cli("--version")
    assert res.returncode == 0 and CORE_VERSION in res.stdout
