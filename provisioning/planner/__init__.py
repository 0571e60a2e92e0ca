"""The planner: business commands (`server create --infra X`, ...) as workflows.

It sits between the CLI/API and the engine: it reads infras and recorded
state through ops/ and produces the engine's WorkflowSpec, and it is the one
place that knows how a command expands into tasks. The CLI (cli/server.py)
and the API (POST /workflows/servers/create etc., orchestrator/api.py)
both call `build_workflow`.

- build.py: `build_workflow(kind, infra, params, state=)` -> WorkflowSpec.
- A plan of a command (`--plan`: the workflow it would submit and each task's
  intended action from a read of the provider) belongs here too, beside
  build.py, as `planner/plan.py`: it starts from the same WorkflowSpec.

ops/ never imports the planner or the engine; the planner imports ops/ and
the workflow model, nothing above them (tests/test_layering.py).
"""

from __future__ import annotations

from provisioning.planner.build import KINDS, build_workflow

__all__ = ["KINDS", "build_workflow"]
