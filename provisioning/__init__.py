"""provisioning: infrastructure provisioning CLI with a local orchestrator daemon.

Keep this module import-free: every CLI start pays for what it imports.
"""

__version__ = "3.2.1"  # core version (CLI + business logic)
