"""What a taskserv sees: the template context, the install context, its env.

One dict serves both the templates (provisioning.ops.templates) and the
`install`/`remove`/`check` scripts (JSON on stdin), and a flat subset goes
into their environment as `PROVISIONING_*` variables, so a POSIX sh script
needs no JSON parser:

  PROVISIONING_HOSTNAME, PROVISIONING_ADDRESS, PROVISIONING_ROOT (the server's
  root: "/" on a real host), PROVISIONING_INFRA, PROVISIONING_TASKSERV,
  PROVISIONING_TASKSERV_DIR (where its folder was copied on the server),
  PROVISIONING_PYTHON (the host's python3), PROVISIONING_PORT_<NAME>,
  PROVISIONING_REQ_<TASKSERV>_PORT_<NAME>, PROVISIONING_VALUE_<KEY> (each
  scalar of the taskserv's values, except secret-by-name keys such as
  `password`: those are in the stdin JSON only, since a remote command's
  environment may be passed on its command line).

Not PROVISIONING_<SECTION>_* of a config section (server, storage...): a
nested `provisioning` call would read those as its own configuration.
"""

from __future__ import annotations

import re
from typing import Any

from provisioning.ops import redact
from provisioning.ops.taskservs import deploy_dir, effective_ports, template_values

SERVER_FIELDS = ("hostname", "address", "root", "zone", "plan", "labels", "provider")


def _env_name(*parts: str) -> str:
    return "PROVISIONING_" + "_".join(re.sub(r"[^A-Za-z0-9]", "_", p).upper() for p in parts)


def taskserv_values(infra: Any, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    overrides = {k: v for k, v in infra.taskserv_settings.get(name, {}).items() if k != "ports"}
    return {**defaults, **overrides}


def infra_servers(infra: Any, provider: Any, state: Any) -> list[dict[str, Any]]:
    """Every server of the infra as a template sees it (a load balancer's backends)."""
    out = []
    for s in infra.servers:
        rec = state.server(infra.name, s.hostname)
        ports: dict[str, dict[str, int]] = {}
        for ts in infra.taskserv_plan(s.hostname):
            tdef = infra.catalog.get(ts)
            offset = provider.port_offset(rec) if rec else 0
            ports[ts] = effective_ports(tdef, infra.taskserv_settings.get(ts, {}), offset)
        # The declared address (ssh hosts have one) until the server's record exists: a
        # load balancer's install may run before its backends' servers are adopted.
        address = (rec or {}).get("address") or s.connection.get("address")
        out.append({"hostname": s.hostname, "address": address,
                    "state": "created" if rec else "not created",
                    "taskservs": list(infra.taskserv_plan(s.hostname)),
                    "labels": dict(s.labels), "zone": s.zone, "plan": s.plan, "ports": ports})
    return out


def build(*, infra: Any, server: dict[str, Any], tdef: Any, ports: dict[str, int],
          required_ports: dict[str, dict[str, int]], provider: Any, state: Any
          ) -> dict[str, Any]:
    """The context of one taskserv on one server (templates and scripts)."""
    _, directory = deploy_dir(server.get("root", "/"), tdef.name)
    flat = template_values(infra=infra, server=server, tdef=tdef, ports=ports,
                           required_ports=required_ports)
    view = {k: server.get(k) for k in SERVER_FIELDS if k in server}
    return {
        **flat,
        "hostname": server["hostname"], "address": server["address"],
        "root": server.get("root", "/"), "dir": directory,
        "infra": infra.name, "provider": infra.provider, "taskserv": tdef.name,
        "server": view, "servers": infra_servers(infra, provider, state),
        "settings": dict(infra.settings),
        "values": taskserv_values(infra, tdef.name, tdef.defaults),
        "ports": dict(ports), "required_ports": dict(required_ports),
    }


def script_context(ctx: dict[str, Any]) -> dict[str, Any]:
    """The JSON a script gets on stdin: the structured part of the context."""
    keys = ("hostname", "address", "root", "dir", "infra", "provider", "taskserv", "server",
            "servers", "settings", "values", "ports", "required_ports")
    return {k: ctx[k] for k in keys if k in ctx}


def script_env(ctx: dict[str, Any], *, python: str) -> dict[str, str]:
    env = {
        _env_name("HOSTNAME"): str(ctx["hostname"]), _env_name("ADDRESS"): str(ctx["address"]),
        _env_name("ROOT"): str(ctx["root"]), _env_name("INFRA"): str(ctx["infra"]),
        _env_name("TASKSERV"): str(ctx["taskserv"]),
        _env_name("TASKSERV", "DIR"): str(ctx["dir"]), _env_name("PYTHON"): python,
    }
    for pname, port in ctx.get("ports", {}).items():
        env[_env_name("PORT", pname)] = str(port)
    for req, rports in ctx.get("required_ports", {}).items():
        for pname, port in rports.items():
            env[_env_name("REQ", req, "PORT", pname)] = str(port)
    for key, value in ctx.get("values", {}).items():
        if redact.is_secret_name(key):  # stdin only: a remote env may travel in argv
            continue
        if isinstance(value, bool):
            env[_env_name("VALUE", key)] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            env[_env_name("VALUE", key)] = str(value)
    return env
