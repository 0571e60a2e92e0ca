"""The `provisioning` command line: parse, pick a mode, call engine or client, render."""
