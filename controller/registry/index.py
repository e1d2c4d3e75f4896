"""A derived index of `results/`: per recipe its last runs and recent history, and the runs in
flight — kept in the state dir, named by the commit it was built from, and brought up to date
from git's own record of what changed since. Reading it costs what changed, not the history.

It also keeps the requests still waiting for a result, so a `serve` pass finds its work without
listing every request ever filed; and per recipe with a canonical its known-good, the run that
promoted it and that run's host, so a pass tells which recipes this host keeps warm without
reading every canonical and promoting result.

The registry stays the truth: the index is rebuilt whenever it is missing, unreadable, not
matching its digest, or its commit is not in the clone's history; nothing that decides a verdict
or a promotion reads it, and a claim checks the registry itself (a stale entry costs a look).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from controller.registry.documents import DOC_MAX_BYTES, parse_canonical
from controller.registry.git import git, is_ancestor
from controller.registry.store import Registry
from controller.util import names
from controller.util.errors import CcciError
from controller.util.files import write_durably
from controller.util.yamlio import load_untrusted

log = logging.getLogger(__name__)

FORMAT = 4  # bump when what an entry holds changes: older indexes are rebuilt
RECENT = 20  # runs kept per recipe for `ccci status --recipe`
FIELDS = ("run", "recipe", "ref", "mode", "requested_mode", "outcome", "cause", "requested_by", "pr",
          "started_at", "finished_at", "host", "controller", "deadline")
MODES = ("cold", "quick", "upgrade", "rewarm")
_TOP_LEVEL = re.compile(r"^([a-z_]+): ?(.*)$")
# A quoted scalar with nothing inside that quoting would change ('', escapes, comments).
_PLAIN_QUOTED = re.compile(r"""^'[^'#]*'$|^"[^"\\#]*"$""")


def brief_of(text: str, where: str) -> dict[str, Any]:
    """The fields the index keeps, read from a result's text. The controller writes them as
    plain top-level scalars, so a line scan reads them; anything else gets the full, safe parser."""
    found: dict[str, Any] = {}
    for line in text.splitlines():
        match = _TOP_LEVEL.match(line)
        if not match or match.group(1) not in FIELDS:
            continue
        value = match.group(2).strip()
        if _PLAIN_QUOTED.match(value):
            value = value[1:-1]  # '2026-12-01T10:00:00Z': quoted so it stays a string
        elif value.startswith(("'", '"', "[", "{", "&", "*", "!", "|", ">", "#")):
            doc = load_untrusted(text.encode(), where, max_bytes=1024 * 1024)
            return {k: doc.get(k) for k in FIELDS} if isinstance(doc, dict) else {}
        found[match.group(1)] = None if value in ("", "null", "~") else (int(value) if value.isdigit() and
                                                                          match.group(1) == "pr" else value)
    return found


def digest_of(body: bytes) -> str:
    """What the index says, hashed: a file edited by hand (or torn by a tool) no longer matches."""
    return hashlib.sha256(body).hexdigest()


def serialise(doc: dict[str, Any]) -> bytes:
    """The file: a header line (format, commit, digest of the rest), then the index on one line.
    One serialisation per save, and a read checks the digest over the bytes it parses, without
    serialising again (a year's index is megabytes of JSON, written after every commit)."""
    body = json.dumps(doc, separators=(",", ":")).encode()
    header = {"format": FORMAT, "commit": doc.get("commit"), "digest": digest_of(body)}
    return json.dumps(header).encode() + b"\n" + body + b"\n"


def load(path: Path) -> dict[str, Any] | None:
    """The index saved at `path`, or None when it is missing, torn, of another format or does not
    match its digest: then it is rebuilt."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    first, _, body = raw.partition(b"\n")
    try:
        header = json.loads(first)
    except ValueError:
        return None  # torn, or from a ccci before this layout: rebuilt without a word
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return None  # from another version of ccci: rebuilt without a word
    body = body.rstrip(b"\n")
    if header.get("digest") != digest_of(body):
        log.warning("results index %s does not match its digest (edited by hand?): rebuilding it", path)
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("commit"), str):
        return None
    return doc


def _empty(commit: str | None) -> dict[str, Any]:
    # in_flight: {run: {host, deadline, recipe}}; hosts: {host: {last_seen}} — the fleet's view;
    # canonicals: {recipe: {known_good, promoted_by_run, host}}.
    return {"format": FORMAT, "commit": commit, "count": 0, "recipes": {}, "running": [], "in_flight": {},
            "hosts": {}, "pending": [], "canonicals": {}}


def host_of(brief: dict[str, Any]) -> str | None:
    """The host a result names: `host`, or the host part of `controller` (results written before
    the fleet say only `<hostname>:<pid>`)."""
    host = brief.get("host")
    if isinstance(host, str) and host:
        return host
    controller = brief.get("controller")
    if isinstance(controller, str) and ":" in controller:
        return controller.rsplit(":", 1)[0].split(".", 1)[0].lower()
    return None


def _request_name(rel: str) -> str | None:
    """The entry of `requests/` a changed path belongs to (serve lists that folder's entries)."""
    name = rel[len(names.REQUESTS_DIR) + 1:].split("/", 1)[0]
    return name if name.endswith(".yaml") and not name.startswith(".") else None


class ResultsIndex:
    """`refresh()` brings it to the clone's HEAD; then read `recipes`, `running`, `count`."""

    def __init__(self, registry: Registry, path: Path) -> None:
        self.registry = registry
        self.path = path
        self.doc: dict[str, Any] = _empty(None)

    @property
    def recipes(self) -> dict[str, dict[str, Any]]:
        return dict(self.doc["recipes"])

    @property
    def running(self) -> list[str]:
        return list(self.doc["running"])

    @property
    def pending(self) -> list[str]:
        """Committed requests without a committed result, oldest run id first."""
        return list(self.doc["pending"])

    @property
    def count(self) -> int:
        return int(self.doc["count"])

    @property
    def in_flight(self) -> dict[str, dict[str, Any]]:
        """{run: {host, deadline, recipe}} of every result that says running."""
        return {run: dict(entry) for run, entry in self.doc["in_flight"].items()}

    @property
    def hosts(self) -> dict[str, dict[str, Any]]:
        """{host: {last_seen}}: the latest time a result of that host names (its commits)."""
        return {host: dict(entry) for host, entry in self.doc["hosts"].items()}

    @property
    def canonicals(self) -> dict[str, dict[str, Any]]:
        """{recipe: {known_good, promoted_by_run, host}} of every readable canonical; `host` is
        the one the promoting run names (None when its result says none)."""
        return {recipe: dict(entry) for recipe, entry in self.doc["canonicals"].items()}

    def refresh(self) -> ResultsIndex:
        head = self.registry.head()
        if self.doc.get("commit") == head:
            return self  # a long-lived index (serve's) already at HEAD: nothing to read
        cached = self.doc if self.doc.get("commit") else load(self.path)
        if cached is not None:
            if cached["commit"] == head:
                self.doc = cached
                return self
            if self._apply_changes(cached, head):
                self._save()
                return self
        self._rebuild(head)
        self._save()
        return self

    def _apply_changes(self, cached: dict[str, Any], head: str) -> bool:
        """Fold in the results changed since the cached commit; False when that cannot be done
        (history rewritten, a result deleted): then the index is rebuilt."""
        root = self.registry.root
        try:
            if not is_ancestor(root, cached["commit"], head):
                return False
            changes = git(root, "diff", "--name-status", "--no-renames", cached["commit"], head, "--",
                          f"{names.RESULTS_DIR}/", f"{names.REQUESTS_DIR}/", f"{names.CANONICALS_DIR}/")
        except CcciError:
            return False
        self.doc = cached
        pending = set(self.doc["pending"])
        requests: list[str] = []
        for line in changes.splitlines():
            status, _, rel = line.partition("\t")
            if rel.startswith(f"{names.REQUESTS_DIR}/"):
                name = _request_name(rel)
                if name and status.startswith("D"):
                    pending.discard(name)  # withdrawn before anyone answered it
                elif name:
                    requests.append(name)
                continue
            if rel.startswith(f"{names.CANONICALS_DIR}/"):
                self._add_canonical(rel, deleted=status.startswith("D"))
                continue
            if status.startswith("D"):
                return False
            self._add(rel)
            answered = Path(rel).stem
            pending -= {n for n in pending if names.result_id_for(n) == answered}
        for name in requests:
            if name not in pending and not self._answered(head, name):
                pending.add(name)
        self.doc["pending"] = sorted(pending)
        self.doc["commit"] = head
        return True

    def _answered(self, head: str, request_name: str) -> bool:
        rel = names.result_rel(names.result_id_for(request_name))
        return bool(git(self.registry.root, "ls-tree", "--name-only", head, "--", rel))

    def _rebuild(self, head: str) -> None:
        log.info("building the results index of %s", self.registry.root)
        self.doc = _empty(head)
        listed = git(self.registry.root, "ls-tree", "-r", "--name-only", head, "--", f"{names.RESULTS_DIR}/")
        answered = set()
        for rel in sorted(listed.splitlines(), key=lambda r: Path(r).name):  # oldest run first
            self._add(rel)
            answered.add(Path(rel).stem)
        requests = git(self.registry.root, "ls-tree", "--name-only", head, "--", f"{names.REQUESTS_DIR}/")
        self.doc["pending"] = sorted(
            name for name in (_request_name(rel) for rel in requests.splitlines())
            if name and names.result_id_for(name) not in answered)
        canonicals = git(self.registry.root, "ls-tree", "--name-only", head, "--", f"{names.CANONICALS_DIR}/")
        for rel in canonicals.splitlines():
            self._add_canonical(rel)

    def _add_canonical(self, rel: str, *, deleted: bool = False) -> None:
        """Record what `canonicals/<recipe>.yaml` says now, with the host of its promoting run
        (read once, when the canonical changes: a result's host never changes)."""
        name = rel[len(names.CANONICALS_DIR) + 1:]
        if "/" in name or not name.endswith(".yaml"):
            return
        recipe = name[: -len(".yaml")]
        self.doc["canonicals"].pop(recipe, None)
        if deleted:
            return
        try:
            current = parse_canonical((self.registry.root / rel).read_bytes()[: DOC_MAX_BYTES + 1], rel)
        except (OSError, CcciError) as exc:
            log.warning("results index: %s left out: %s", rel, getattr(exc, "message", exc))
            return
        host = None
        if current.promoted_by_run:
            promoting = names.result_rel(current.promoted_by_run)
            try:
                host = host_of(brief_of((self.registry.root / promoting).read_text(), promoting))
            except (OSError, UnicodeDecodeError, CcciError):
                host = None  # no readable result: no host promoted it (as a full read would say)
        self.doc["canonicals"][recipe] = {"known_good": current.known_good,
                                          "promoted_by_run": current.promoted_by_run, "host": host}

    def _add(self, rel: str) -> None:
        if not rel.endswith(".yaml"):
            return
        try:
            brief = brief_of((self.registry.root / rel).read_text(), rel)
        except (OSError, UnicodeDecodeError, CcciError) as exc:
            log.warning("results index: %s left out: %s", rel, getattr(exc, "message", exc))
            return
        run, recipe = brief.get("run"), brief.get("recipe")
        if not isinstance(run, str):
            return
        if not isinstance(recipe, str):
            recipe = "(unreadable request)"  # rejections of requests nobody could read
        running = set(self.doc["running"])
        entry = self.doc["recipes"].setdefault(str(recipe), {"recent": []})
        seen = run in running or any(r.get("run") == run for r in entry["recent"])
        if not seen:
            self.doc["count"] += 1
        host = host_of(brief)
        if brief.get("outcome") == "running":
            running.add(run)
            self.doc["in_flight"][run] = {"host": host, "deadline": brief.get("deadline"), "recipe": recipe}
        else:
            running.discard(run)
            self.doc["in_flight"].pop(run, None)
        self.doc["running"] = sorted(running)
        if host is not None:
            stamp = max(str(brief.get("started_at") or ""), str(brief.get("finished_at") or ""))
            entry_host = self.doc["hosts"].setdefault(host, {"last_seen": ""})
            entry_host["last_seen"] = max(entry_host["last_seen"], stamp)
        recent = [r for r in entry["recent"] if r.get("run") != run] + [brief]
        recent.sort(key=lambda r: str(r.get("started_at") or ""))
        entry["recent"] = recent[-RECENT:]
        entry["last"] = recent[-1]
        mode = brief.get("mode")
        if mode in MODES:
            last = entry.get(f"last_{mode}")
            if last is None or str(brief.get("started_at") or "") >= str(last.get("started_at") or ""):
                entry[f"last_{mode}"] = brief
            if mode == "cold" and brief.get("finished_at"):
                entry["last_cold_finished_at"] = max(str(entry.get("last_cold_finished_at") or ""),
                                                     str(brief["finished_at"]))

    def _save(self) -> None:
        try:
            write_durably(self.path, serialise(self.doc))
        except OSError as exc:  # a read-only state dir: the index is only a cache
            log.warning("results index not saved: %s", exc)
