"""Runs whose host died and never came back: past the deadline its claim carries, another host
marks them `aborted` (and, when `serve.refile_abandoned` says so, files them again once), so no
result stays `running` for ever. A host's own runs are its own start-up recovery's (recover.py):
it knows from its in-flight markers, without waiting for any deadline."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

from controller.flows import runs
from controller.flows.context import Context
from controller.registry.documents import Request
from controller.registry.index import ResultsIndex
from controller.util import names
from controller.util.errors import CcciError
from controller.util.files import write_whole
from controller.util.log import run_context
from controller.util.timeutil import new_run_id, parse_iso, utcnow
from controller.util.yamlio import dump_document

log = logging.getLogger(__name__)


def overdue(in_flight: dict[str, dict[str, object]], host: str, now: dt.datetime) -> list[str]:
    """Pure: the runs in flight on other hosts whose deadline has passed (a result without a
    deadline was written before the fleet: only its own host may end it)."""
    late = []
    for run_id, entry in sorted(in_flight.items()):
        deadline, owner = entry.get("deadline"), entry.get("host")
        if not isinstance(deadline, str) or owner in (None, host):
            continue
        try:
            if parse_iso(deadline) <= now:
                late.append(run_id)
        except ValueError:
            continue
    return late


def mark_abandoned(ctx: Context, index: ResultsIndex, now: dt.datetime | None = None) -> list[str]:
    """Publish `aborted` for every overdue run of another host (each re-checked against its
    result, in the commit that ends it); the runs marked."""
    now = now or utcnow()
    marked = []
    for run_id in overdue(index.refresh().in_flight, ctx.host, now):
        with run_context(run_id):
            try:
                if _abort_overdue(ctx, run_id, now):
                    marked.append(run_id)
            except CcciError as exc:
                log.warning("could not mark %s aborted: %s", run_id, exc.message)
    return marked


def _abort_overdue(ctx: Context, run_id: str, now: dt.datetime) -> bool:
    existing = ctx.registry.result(run_id)  # the truth, not the index
    if existing is None or existing.get("outcome") != "running":
        return False
    deadline, owner = str(existing.get("deadline") or ""), existing.get("host")
    if not deadline or owner == ctx.host or parse_iso(deadline) > now:
        return False
    request = None
    with contextlib.suppress(CcciError):  # aborted all the same; nothing to re-file from
        request = ctx.registry.read_request(f"{run_id}.yaml")
    refile = _refile(ctx, request, run_id, str(owner)) if request is not None else None
    why = (f"host {owner} did not finish this run by its deadline {deadline} and has not come back; "
           f"{ctx.host} marked it aborted")
    if refile is not None:
        why += f" and filed it again as {refile.run_id}"
    elif request is not None and request.refiled_from:
        why += f" (it re-ran {request.refiled_from} already: not filed again)"
    also = _writer(refile) if refile is not None else None
    published = runs.abort(ctx, run_id, existing, why=why, only_if_running=True, also=also)
    if published.commit is None:
        return False  # its host answered after all, or another host marked it first
    log.warning("marked %s of host %s aborted: past its deadline %s", run_id, owner, deadline)
    return True


def _refile(ctx: Context, request: Request, run_id: str, owner: str) -> Request | None:
    """The request that runs an abandoned one again, once: never for a re-filed one."""
    if not ctx.settings.serve.refile_abandoned or request.refiled_from:
        return None
    return Request(run_id=new_run_id(request.recipe), recipe=request.recipe, ref=request.ref, mode=request.mode,
                   requested_by=request.requested_by,
                   trigger=f"re-filed: {run_id} was abandoned by host {owner}", pr=request.pr,
                   refiled_from=run_id)


def _writer(request: Request) -> Callable[[Path], list[str]]:
    def write(root: Path) -> list[str]:
        rel = names.request_rel(request.run_id)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_whole(root / rel, dump_document(request.to_document()))
        return [rel]

    return write
