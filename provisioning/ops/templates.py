"""Taskserv templates: Jinja2, sandboxed, every undefined name an error.

A template under a taskserv's `templates/` is rendered on the orchestrator
(in the op's task process) before anything is copied to the server. It sees
(see `context` in provisioning.ops.installs):

  server    this server's record: hostname, address, root, zone, plan, labels
  servers   every server of the infra, in declaration order, each with
            hostname, address (None until created), state, taskservs, labels,
            zone, plan and `ports` ({taskserv: {port name: port}})
  settings  the infra's [settings] table
  values    the taskserv's [defaults] overridden by the infra's [taskservs.<name>]
  ports     this taskserv's ports here; `required_ports` those of what it requires

plus, for short templates, flat names: hostname, address, zone, plan, infra,
provider, taskserv, server_root, port_<name>, <req>_port_<name>,
setting_<key>, label_<key> and each value by its own name.

`SandboxedEnvironment` (a template cannot reach Python internals) with
`StrictUndefined` (a typo fails instead of rendering empty) and no
autoescaping (these are config files, not HTML pages to protect). A failure
is a ValidationError naming the template file, the line and the undefined
name.

Jinja2 is imported here only: this module is imported by the op's task
process when it renders, never by the CLI on its start-up path.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from provisioning.errors import ValidationError


def _environment(directory: Path) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(directory)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        auto_reload=False,
    )


def _line_in(path: Path, tb: Any) -> int | None:
    """The template line a render error came from (Jinja rewrites the traceback
    so that the template's own frames carry its file name and line)."""
    line = None
    for frame in traceback.extract_tb(tb):
        if Path(frame.filename) == path:
            line = frame.lineno
    return line


def render(directory: Path, name: str, context: dict[str, Any]) -> str:
    """Render `directory/name` with `context`; a ValidationError on any failure."""
    path = directory / name
    env = _environment(directory)
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as e:
        raise ValidationError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None
    except jinja2.UndefinedError as e:
        line = _line_in(path, e.__traceback__)
        where = f"{path}:{line}" if line else str(path)
        raise ValidationError(f"{where}: undefined template value: {e.message}",
                              hint="the names a template sees: server, servers, settings, "
                                   "values, ports, required_ports (docs/taskservs.md)") from None
    except jinja2.TemplateNotFound as e:
        raise ValidationError(f"{path}: template not found: {e.name}") from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError,
            LookupError, AttributeError) as e:
        line = _line_in(path, e.__traceback__)
        where = f"{path}:{line}" if line else str(path)
        raise ValidationError(f"{where}: template error: {e}") from None
