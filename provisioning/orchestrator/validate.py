"""What a request may carry: the API's input checks, each a 400 naming the field.

Endpoints (endpoints.py) call these on path parameters, query values and
JSON bodies before the engine sees anything; ApiHandler (api.py) turns an
HttpError into its status and `{"error": ...}`.
"""

from __future__ import annotations

from typing import Any

from provisioning.model import (
    TASK_ID_RULE,
    WORKFLOW_ID_EXAMPLE,
    valid_task_key,
    valid_workflow_id,
)

MAX_TEXT = 4096  # progress messages, infra names
MAX_JSON_DEPTH = 64  # deeper documents would hit recursion limits later, in the engine


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def too_deep(data: Any, limit: int) -> bool:
    """Iterative (no recursion) check of the nesting depth of a parsed document."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null", int: "number", float: "number"}.get(type(value), "value")


def only_fields(body: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = [k for k in body if k not in known]
    if unknown:
        raise HttpError(400, f"unknown field '{str(unknown[0])[:50]}' "
                        f"(known: {', '.join(known) or 'none'})")


def workflow_id(params: dict[str, str]) -> str:
    value = params["workflow_id"]
    if not valid_workflow_id(value):
        raise HttpError(400, f"invalid workflow id: expected a lower-case uuid like "
                        f"{WORKFLOW_ID_EXAMPLE}")
    return value


def task_key(params: dict[str, str]) -> str:
    value = params["task_key"]
    if not valid_task_key(value):
        raise HttpError(400, "invalid task id: expected <workflow_id>.<task_id> (a workflow "
                        f"uuid; for the task id {TASK_ID_RULE})")
    return value


def int_param(query: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 18 or int(raw) < minimum:
        raise HttpError(400, f"'{name}' must be an integer >= {minimum}")
    return int(raw)


def float_param(query: dict[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HttpError(400, f"'{name}' must be a number of seconds") from None
    if not value >= minimum or value != value or value == float("inf"):
        raise HttpError(400, f"'{name}' must be a number >= {minimum:g}")
    return value
