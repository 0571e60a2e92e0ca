"""Op `cluster.check` (task protocol: params JSON on stdin, RESULT line on stdout)."""
import os
import sys

# This script's folder is not a package: never import sibling files from it.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

from provisioning.ops.handlers import cluster_check  # noqa: E402
from provisioning.ops.protocol import run_op  # noqa: E402

run_op(cluster_check)
