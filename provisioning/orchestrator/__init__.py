"""The orchestrator daemon: lifecycle (main, daemon), HTTP API (api, openapi), auth, sd_notify.

It hosts the workflow engine over the durable JSON-file store. Keep this
module import-free: the CLI imports pieces of this package on hot paths.
"""
