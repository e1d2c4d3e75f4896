"""Follow-up cold: the cold run a failed quick run files, when its recipe opts in.

A failed quick run says the upgrade from the known-good broke, not whether a fresh install of
the same commit works; the follow-up answers that, so a pull request learns which one breaks.
"""

from __future__ import annotations

from controller.registry.documents import Request
from controller.registry.results import RunResult
from controller.registry.settings import Settings
from controller.util.timeutil import new_run_id


def follow_up_request(settings: Settings, result: RunResult, request: Request | None) -> Request | None:
    """The cold request a finished quick run files (a new run id), or None. It is asked for by
    the quick run's requester and goes back to the same pull request; authority.cold admits it
    or rejects it like any other cold request, so opting in widens no one's authority."""
    if request is None or result.mode != "quick" or result.outcome != "fail" or not result.ref:
        return None
    recipe = settings.recipes.get(result.recipe or "")
    if recipe is None or not recipe.follow_up_cold:
        return None
    return Request(run_id=new_run_id(recipe.name), recipe=recipe.name, ref=result.ref, mode="cold",
                   requested_by=request.requested_by, pr=request.pr, forge=request.forge,
                   trigger=f"follow-up of the failed quick run {result.run}", follow_up_of=result.run)
