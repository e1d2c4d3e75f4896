"""The quick flow (DESIGN §4): not built yet in this controller."""

from __future__ import annotations

from controller.flows.context import Context
from controller.registry.documents import Request
from controller.registry.results import RunResult
from controller.util.errors import CcciError


def run_quick(ctx: Context, request: Request, result: RunResult) -> None:
    raise CcciError("quick mode has no runner in this controller yet", cause="infra")
