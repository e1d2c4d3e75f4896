"""Verdicts back to the PR they came from: the sink that queues a `pending` status at claim, and
the final status and one comment at the end (what the mode proves, whether it gates, what
failed, a link to the result). Rendering is pure; delivery is the outbox's."""

from __future__ import annotations

import logging

from controller.flows import modes
from controller.flows.context import Context, Publication, Run
from controller.flows.forge import outbox
from controller.flows.forge.outbox import Report
from controller.registry.documents import Request
from controller.registry.results import RunResult
from controller.registry.settings import ForgeSettings
from controller.util.names import result_rel

log = logging.getLogger(__name__)

DESCRIPTION_MAX = 140  # what a forge shows beside a status without cutting it
MARKER = "<!-- ccci:{kind}:{key} -->"  # how ccci finds its own comments on a PR
STATES = {"pass": "success", "fail": "failure", "error": "error", "aborted": "error"}
ICONS = {"pass": "✅", "fail": "❌", "error": "⚠️", "aborted": "⚠️", "rejected": "🚫"}


def verdict_marker(run: str) -> str:
    return MARKER.format(kind="verdict", key=run)


def reply_marker(comment_id: int) -> str:
    return MARKER.format(kind="reply", key=comment_id)


def is_own(body: str) -> bool:
    """A comment ccci wrote (whatever account posted it): never a trigger."""
    return "<!-- ccci:" in body


def context_of(forge: ForgeSettings, mode: str | None) -> str:
    return f"{forge.context}/{mode or 'cold'}"


def results_link(forge: ForgeSettings, run: str) -> str | None:
    return forge.results_url.replace("{path}", result_rel(run)) if forge.results_url else None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_MAX else text[: DESCRIPTION_MAX - 1] + "…"


def status_description(result: RunResult) -> str:
    """One line: the outcome and the gist of it."""
    if result.outcome == "running":
        return _short(f"running {result.mode}" + (f" (asked {result.requested_mode}: {result.fallback})"
                                                  if result.fallback else ""))
    if result.outcome == "pass":
        return _short(f"pass: {modes.mode(result.mode).proves}")
    return _short(f"{result.outcome}: {result.error or result.cause or 'see the result'}")


def verdict_comment(forge: ForgeSettings, result: RunResult) -> str:
    """The one PR comment of a run."""
    entry = modes.MODES.get(result.mode or "")
    label = modes.label_of(result.mode or result.requested_mode, result.outcome)
    ref = (result.ref or "?")[:7]
    lines = [verdict_marker(result.run),
             f"**ccci {label}: {result.outcome}** {ICONS.get(result.outcome, '')} "
             f"`{result.recipe}@{ref}` (run `{result.run}`)", ""]
    if entry is not None:
        gate = (f"it gates merging (`{context_of(forge, entry.name)}`)" if entry.gates else
                f"informational, it never gates a merge (`{context_of(forge, entry.name)}`)")
        lines.append(f"*{entry.name}* proves that {entry.proves}; {gate}.")
    if result.fallback:
        lines.append(f"You asked for *{result.requested_mode}*; *{result.mode}* ran instead: "
                     f"{result.fallback} (no canonical or no last-known-good snapshot yet).")
    if result.outcome == "rejected":
        lines.append(f"Nothing ran: {result.error}")
    elif result.error:
        lines.append(f"Why: {result.error}")
    if result.matrix:
        lines += ["", "| from | verdict | why |", "|---|---|---|"]
        lines += [f"| `{row['from']}` | {row['verdict']} | {' '.join(str(row.get('error') or '').split())[:200]} |"
                  for row in result.matrix]
    failed = [a for a in result.asserts if not a.ok]
    if failed:
        lines += ["", "Failed asserts:"] + [f"- `{a.name}`: {' '.join(a.detail.split())[:300]}" for a in failed]
    if result.phases:
        shown = " · ".join(f"{p.name} {p.seconds:.1f} s{' ✗' if p.status == 'failed' else ''}"
                           for p in result.phases)
        lines += ["", f"Phases: {shown}"]
    link = results_link(forge, result.run)
    if link:
        lines += ["", f"[The result file]({link})"]
    return "\n".join(lines) + "\n"


def reply_comment(comment_id: int, login: str, reason: str) -> str:
    """The answer to a comment that asked for a run that will not happen."""
    return f"{reply_marker(comment_id)}\n@{login}: no run — {reason}\n"


class ForgeReporter:
    """The sink: queues what the forge must hear about runs a PR comment asked for."""

    name = "forge"

    def claimed(self, ctx: Context, run: Run) -> None:
        forge, origin, result = ctx.settings.forge, run.request.forge, run.result
        if not forge.enabled or origin is None or not result.ref:
            return
        outbox.enqueue(ctx.state, Report(
            key=f"status-{result.run}-pending", repo=origin.repo, pr=origin.pr, kind="status",
            sha=result.ref, state="pending", context=context_of(forge, result.mode),
            description=status_description(result), target_url=results_link(forge, result.run)))

    def published(self, ctx: Context, result: RunResult, request: Request | None,
                  publication: Publication) -> None:
        forge = ctx.settings.forge
        origin = request.forge if request is not None else None
        if not forge.enabled or origin is None:
            return
        state = STATES.get(result.outcome)
        if state is not None and result.ref:
            outbox.enqueue(ctx.state, Report(
                key=f"status-{result.run}-final", repo=origin.repo, pr=origin.pr, kind="status",
                sha=result.ref, state=state, context=context_of(forge, result.mode),
                description=status_description(result), target_url=results_link(forge, result.run)),
                supersedes=f"status-{result.run}-pending")
        outbox.enqueue(ctx.state, Report(
            key=f"comment-{result.run}", repo=origin.repo, pr=origin.pr, kind="comment",
            body=verdict_comment(forge, result), marker=verdict_marker(result.run)))
