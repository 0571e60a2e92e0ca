"""Importing a provider's optional SDK (boto3, ...) inside a task process.

An SDK is an optional extra (`pip install 'provisioning[aws]'`), or, for the
zipapp on an air-gapped host, the providers bundle of wheels that
`install.sh --bundle` unpacks into `<prefix>/lib/provisioning-providers/`,
the sibling of the lib dir `<prefix>/lib/provisioning` (not inside it: the op
registry would list every module there as an op). The zipapp's own
site-packages does not hold the SDKs (the core zipapp does not grow), so
import_sdk() adds that directory to sys.path when the plain import fails.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from provisioning.config import current_lib_dirs
from provisioning.errors import ProvisioningError

PROVIDERS_DIR_NAME = "provisioning-providers"


def providers_dirs(lib_dirs: list[Path] | None = None) -> list[Path]:
    """Where installed providers bundles are: `<lib dir>/../provisioning-providers`."""
    out = []
    for lib in current_lib_dirs() if lib_dirs is None else lib_dirs:
        d = Path(lib).parent / PROVIDERS_DIR_NAME
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def import_sdk(module: str, *, provider: str, extra: str,
               lib_dirs: list[Path] | None = None) -> ModuleType:
    """`module`, imported; ProvisioningError saying how to install it if it is absent."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    looked = providers_dirs(lib_dirs)
    for d in looked:
        if str(d) not in sys.path:
            sys.path.append(str(d))
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        where = ", ".join(str(d) for d in looked) or "no providers bundle installed"
        raise ProvisioningError(
            f"the {provider} provider needs {module}, which is not installed ({e}; "
            f"looked in {where})",
            hint=f"pip install 'provisioning[{extra}]', or install the providers bundle: "
                 "install.sh --bundle DIR (offline)") from None
