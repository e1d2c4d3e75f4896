"""The host policy in the flows: what a stack asks of the host is judged before anything of it
is deployed, and a PR head that asks for more than its known-good is named as such."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.flows.context import Context, phase
from controller.flows.deployment import Deployment
from controller.registry.results import RunResult
from controller.runtime.compose import read_layout, rendered_files
from controller.runtime.policy import Ask, granted, stack_asks
from controller.runtime.spec import stack_env
from controller.util.errors import BadInput, CcciError

log = logging.getLogger(__name__)


class PolicyRefused(BadInput):
    """The stack asks the host for what ccci.yaml does not grant: a `rejected` run, cause policy."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.cause = "policy"


def asks_of(dep: Deployment) -> list[tuple[str, Ask]]:
    """(compose file, ask) for every file the deploy of `dep` reads, as it will read them."""
    try:
        dep.layout = read_layout(dep.checkout, {**dep.recipe.env, "STACK_NAME": dep.app, "DOMAIN": dep.domain})
        env = stack_env(dep.layout, dep.spec(), dep.extra_env)
        files = rendered_files(dep.checkout, dep.layout, env)
    except CcciError as exc:
        raise CcciError(exc.message, cause="recipe") from exc
    return [(name, ask) for name, doc in files.items() for ask in stack_asks(doc, app=dep.app)]


def judge(ctx: Context, result: RunResult, dep: Deployment, *,
          known_good: Callable[[], Deployment | None] | None = None) -> None:
    """PolicyRefused unless every ask of `dep` is granted; the result records what it asks,
    and what it asks beyond the known-good (`known_good()` is called only when it asks anything)."""
    with phase(ctx, result, "policy"):
        asks = asks_of(dep)
        allow = dep.recipe.allow
        added: list[str] = []
        base = known_good() if asks and known_good is not None else None
        if base is not None and base.commit != dep.commit:
            before = {ask.grant for _, ask in asks_of(base)}
            added = sorted({ask.grant for _, ask in asks} - before)
        result.policy = {"asks": sorted({ask.grant for _, ask in asks}), "added": added,
                         "granted": sorted({ask.grant for _, ask in asks if granted(ask, allow)})}
        refused = [(file, ask) for file, ask in asks if not granted(ask, allow)]
        if not refused:
            if added:
                log.warning("%s@%s asks for %s beyond its known-good (granted in ccci.yaml)",
                            dep.recipe.name, dep.commit[:12], ", ".join(added))
            return
        file, first = refused[0]
        sentence = first.sentence(file, dep.recipe.name)
        others = sorted({ask.grant for _, ask in refused[1:]} - {first.grant})
        if others:
            sentence += f"; it also asks for {', '.join(others)}"
        if added and base is not None:
            sentence += (f"; the PR head adds {', '.join(added)} over the known-good {base.commit[:12]}")
        raise PolicyRefused(sentence + ". Nothing was deployed.")
