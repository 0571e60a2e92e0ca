"""Taskserv templates in Jinja2: context, strictness, sandbox, errors; lazy import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.errors import ValidationError
from provisioning.ops import templates
from tests.conftest import REPO


def write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return d


CTX = {
    "server": {"hostname": "lb-1", "address": "127.0.0.9"},
    "servers": [
        {"hostname": "web-1", "address": "10.0.0.1", "taskservs": ["web"],
         "ports": {"web": {"http": 8080}}},
        {"hostname": "db-1", "address": "10.0.0.2", "taskservs": ["redis"],
         "ports": {"redis": {"redis": 6379}}},
        {"hostname": "web-2", "address": "10.0.0.3", "taskservs": ["web"],
         "ports": {"web": {"http": 8081}}},
    ],
    "settings": {"domain": "example.test"},
    "values": {"workers": 3},
}


def test_a_load_balancer_lists_its_backends_from_servers(tmp_path):
    d = write(tmp_path, "up.conf", (
        "upstream app {\n"
        "{% for s in servers if 'web' in s.taskservs %}"
        "  server {{ s.address }}:{{ s.ports.web.http }};\n"
        "{% endfor %}}\n"
        "# {{ server.hostname }}.{{ settings.domain }} x{{ values.workers }}\n"))
    out = templates.render(d, "up.conf", CTX)
    assert out == ("upstream app {\n  server 10.0.0.1:8080;\n  server 10.0.0.3:8081;\n}\n"
                   "# lb-1.example.test x3\n")


def test_undefined_name_fails_naming_file_line_and_name(tmp_path):
    d = write(tmp_path, "t.conf", "a {{ server.hostname }}\nb\nc {{ values.nosuch }}\n")
    with pytest.raises(ValidationError) as e:
        templates.render(d, "t.conf", CTX)
    assert f"{d / 't.conf'}:3: undefined template value" in e.value.message
    assert "nosuch" in e.value.message


def test_syntax_error_names_the_line(tmp_path):
    d = write(tmp_path, "t.conf", "ok\n{% for x in %}\n")
    with pytest.raises(ValidationError, match=r"t.conf:2: template syntax error"):
        templates.render(d, "t.conf", CTX)


def test_the_sandbox_refuses_python_internals(tmp_path):
    d = write(tmp_path, "t.conf", "{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(ValidationError, match=r"t.conf:1: template error: .*unsafe"):
        templates.render(d, "t.conf", CTX)


def test_cli_start_up_never_imports_jinja2():
    code = ("import sys, runpy; sys.argv = ['provisioning', 'version']\n"
            "try:\n    runpy.run_module('provisioning', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "import provisioning.ops.installs, provisioning.ops.handlers\n"
            "sys.exit(3 if 'jinja2' in sys.modules else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
