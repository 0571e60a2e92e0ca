"""ops/providers/sdk.py: an optional SDK found in an installed providers bundle."""

from __future__ import annotations

import sys

import pytest

from provisioning.errors import ProvisioningError
from provisioning.ops.providers.sdk import import_sdk, providers_dirs


def test_a_missing_sdk_says_how_to_install_it(tmp_path):
    lib = tmp_path / "lib" / "provisioning"
    lib.mkdir(parents=True)
    with pytest.raises(ProvisioningError) as e:
        import_sdk("no_such_sdk_for_test", provider="aws", extra="aws", lib_dirs=[lib])
    assert "the aws provider needs no_such_sdk_for_test" in str(e.value)
    assert "pip install 'provisioning[aws]'" in str(e.value) and "--bundle" in str(e.value)


def test_an_sdk_beside_the_lib_dir_is_imported(tmp_path, monkeypatch):
    lib = tmp_path / "lib" / "provisioning"
    lib.mkdir(parents=True)
    site = tmp_path / "lib" / "provisioning-providers"
    (site / "fake_sdk_for_test").mkdir(parents=True)
    (site / "fake_sdk_for_test" / "__init__.py").write_text("VERSION = '1.2'\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "fake_sdk_for_test", raising=False)
    assert providers_dirs([lib]) == [site]
    module = import_sdk("fake_sdk_for_test", provider="aws", extra="aws", lib_dirs=[lib])
    assert module.VERSION == "1.2" and str(site) in sys.path
