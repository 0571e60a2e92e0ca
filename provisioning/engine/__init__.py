"""The workflow engine: model, validation, scheduler, subprocess executor.

One engine: the daemon hosts it over a JSON-file store, direct mode runs it
in-process over a memory store.
"""
