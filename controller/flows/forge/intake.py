"""From a PR comment to a request commit: one comment is one request, whatever the
redeliveries, restarts or number of bots, because the request's run id is made from the comment
(its time and a hash of its forge, repository and id)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

from controller.flows import modes
from controller.flows.context import Context
from controller.flows.forge import outbox
from controller.flows.forge.authority import admitting_rule, is_forge_rule
from controller.flows.forge.connect import recipe_for_repo
from controller.flows.forge.reporter import is_own, reply_comment, reply_marker
from controller.flows.requests import check_request, trigger_mode
from controller.forge import CommentEvent, ForgeClient
from controller.registry.documents import ForgeOrigin, Request
from controller.util.errors import BadInput
from controller.util.log import run_context
from controller.util.timeutil import parse_iso, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intake:
    """What became of one comment."""

    outcome: str  # filed | duplicate | replied | ignored
    detail: str  # the run id, or why
    run_id: str | None = None


def comment_run_id(forge_url: str, event: CommentEvent, recipe: str) -> str:
    """The same for every bot that sees this comment, at any time: its creation time (UTC)
    and 6 hex of a hash of where it is."""
    try:
        moment = parse_iso(event.created_at).astimezone(dt.UTC) if event.created_at else utcnow()
    except ValueError:
        moment = utcnow()
    digest = hashlib.sha256(f"{forge_url.rstrip('/')}|{event.repo.casefold()}|{event.comment_id}".encode())
    return f"{moment:%Y%m%dT%H%M%S}-{recipe}-{digest.hexdigest()[:6]}"


def handle_comment(ctx: Context, client: ForgeClient, bot_login: str, event: CommentEvent) -> Intake:
    """Ignore what is no request; answer what must not run; file what may."""
    if event.action != "created":
        return Intake("ignored", f"a comment {event.action}, not created")
    if not event.on_pull:
        return Intake("ignored", "not a pull request")
    if event.login.casefold() == bot_login.casefold() or is_own(event.body):
        return Intake("ignored", "the bot's own comment")
    try:
        mode = trigger_mode(event.body)
    except BadInput as exc:
        return _reply(ctx, event, exc.message.removeprefix("comment: "))
    if mode is None:
        return Intake("ignored", "not a trigger")
    settings = ctx.settings
    recipe = recipe_for_repo(settings, event.repo)
    if recipe is None:
        return _reply(ctx, event, f"{event.repo} is not a recipe this CI tests (no `forge_repo: "
                                  f"{event.repo}` under `recipes` in its ccci.yaml)")
    pull = client.pull(event.repo, event.number)
    if pull is None or pull.state != "open" or pull.merged:
        return _reply(ctx, event, f"pull request #{event.number} is not open")
    key = modes.mode(mode).authority or mode
    rule = admitting_rule(client, settings.authority.rules(key), event.login, event.repo)
    if rule is None:
        return _reply(ctx, event, f"{event.login} may not request {mode} runs (authority.{key} in "
                                  f"ccci.yaml)")
    assert settings.forge.url
    request = Request(
        run_id=comment_run_id(settings.forge.url, event, recipe.name), recipe=recipe.name,
        ref=pull.head_sha.lower(), mode=mode, requested_by=event.login, trigger=event.body.strip()[:1000],
        pr=event.number,
        forge=ForgeOrigin(event.repo, event.number, event.comment_id,
                          allowed_by=rule if is_forge_rule(rule) else None))
    with run_context(request.run_id):
        try:
            check_request(request)
        except BadInput as exc:
            return _reply(ctx, event, exc.message)
        try:
            ctx.registry.file_request(request, label=mode)
        except BadInput as exc:
            if "already exists" not in exc.message:
                raise
            return Intake("duplicate", f"comment {event.comment_id} was filed before", request.run_id)
        log.info("filed %s for %s#%d comment %d by %s", request.run_id, event.repo, event.number,
                 event.comment_id, event.login)
    return Intake("filed", request.run_id, request.run_id)


def _reply(ctx: Context, event: CommentEvent, reason: str) -> Intake:
    outbox.enqueue(ctx.state, outbox.Report(
        key=f"reply-{event.comment_id}", repo=event.repo, pr=event.number, kind="comment",
        body=reply_comment(event.comment_id, event.login, reason), marker=reply_marker(event.comment_id)))
    log.info("answering %s#%d comment %d: %s", event.repo, event.number, event.comment_id, reason)
    return Intake("replied", reason)
