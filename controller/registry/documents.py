"""One loader per document kind, and pure builders for the documents the controller writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.registry import schemas
from controller.util.errors import BadInput
from controller.util.names import RUN_ID_RE
from controller.util.yamlio import load_untrusted, read_capped, read_untrusted

REQUEST_MAX_BYTES = 16 * 1024
DOC_MAX_BYTES = 64 * 1024
RESULT_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class ForgeOrigin:
    """The PR comment a request came from: where its verdict goes back to."""

    repo: str  # owner/name
    pr: int
    comment_id: int
    allowed_by: str | None = None  # the forge authority rule that admitted the commenter

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"repo": self.repo, "pr": self.pr, "comment_id": self.comment_id}
        if self.allowed_by:
            doc["allowed_by"] = self.allowed_by
        return doc


@dataclass(frozen=True)
class Request:
    run_id: str
    recipe: str
    ref: str
    mode: str
    requested_by: str
    trigger: str | None = None
    pr: int | None = None
    forge: ForgeOrigin | None = None
    refiled_from: str | None = None  # the abandoned run this one re-runs
    follow_up_of: str | None = None  # the failed quick run a follow-up cold request answers

    @property
    def rel_path(self) -> str:
        return f"requests/{self.run_id}.yaml"

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "recipe": self.recipe,
            "ref": self.ref,
            "mode": self.mode,
            "requested_by": self.requested_by,
        }
        if self.trigger is not None:
            doc["trigger"] = self.trigger
        if self.pr is not None:
            doc["pr"] = self.pr
        if self.forge is not None:
            doc["forge"] = self.forge.to_document()
        if self.refiled_from is not None:
            doc["refiled_from"] = self.refiled_from
        if self.follow_up_of is not None:
            doc["follow_up_of"] = self.follow_up_of
        return doc


@dataclass(frozen=True)
class Canonical:
    recipe: str
    known_good: str
    promoted_by_run: str
    promoted_at: str
    source: str = ""
    domain: str = ""


@dataclass(frozen=True)
class SnapshotIndex:
    app: str
    commit: str
    path: str
    volumes: dict[str, dict[str, int]]
    manifest_sha256: str
    taken_at: str
    taken_by_run: str | None = None


def parse_request(raw: bytes, file_name: str) -> Request:
    """Validate one request file's bytes; every error names the file and the field."""
    where = f"requests/{file_name}"
    stem = file_name[: -len(".yaml")]
    match = RUN_ID_RE.match(stem)
    if not match:
        raise BadInput(
            f"{where}: at '(file name)': {stem!r} is not a run id (<yyyymmddThhmmss>-<recipe>-<6 hex>)"
        )
    doc = load_untrusted(raw, where, max_bytes=REQUEST_MAX_BYTES)
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: at '(top level)': expected a mapping, found {type(doc).__name__}")
    schemas.validate(doc, schemas.REQUEST, where)
    if doc["recipe"] != match.group(2):
        raise BadInput(
            f"{where}: at 'recipe': {doc['recipe']!r} does not match the run id's recipe {match.group(2)!r}"
        )
    return Request(
        run_id=stem,
        recipe=doc["recipe"],
        ref=doc["ref"],
        mode=doc["mode"],
        requested_by=doc["requested_by"],
        trigger=doc.get("trigger"),
        pr=doc.get("pr"),
        forge=ForgeOrigin(**doc["forge"]) if doc.get("forge") else None,
        refiled_from=doc.get("refiled_from"),
        follow_up_of=doc.get("follow_up_of"),
    )


def read_request(path: Path) -> Request:
    return parse_request(read_capped(path, f"requests/{path.name}", REQUEST_MAX_BYTES), path.name)


def parse_canonical(raw: bytes, where: str) -> Canonical:
    doc = load_untrusted(raw, where, max_bytes=DOC_MAX_BYTES)
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: at '(top level)': expected a mapping")
    schemas.validate(doc, schemas.CANONICAL, where)
    return Canonical(
        recipe=doc["recipe"],
        known_good=doc["known_good"],
        promoted_by_run=doc["promoted_by_run"],
        promoted_at=doc["promoted_at"],
        source=doc.get("source", ""),
        domain=doc.get("domain", ""),
    )


def parse_snapshot_index(raw: bytes, where: str) -> SnapshotIndex:
    doc = load_untrusted(raw, where, max_bytes=DOC_MAX_BYTES)
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: at '(top level)': expected a mapping")
    schemas.validate(doc, schemas.SNAPSHOT_INDEX, where)
    return SnapshotIndex(
        app=doc["app"],
        commit=doc["commit"],
        path=doc["path"],
        volumes={k: {"files": v["files"], "bytes": v["bytes"]} for k, v in doc["volumes"].items()},
        manifest_sha256=doc["manifest_sha256"],
        taken_at=doc["taken_at"],
        taken_by_run=doc.get("taken_by_run"),
    )


def parse_result(raw: bytes, where: str) -> dict[str, Any]:
    doc = load_untrusted(raw, where, max_bytes=RESULT_MAX_BYTES)
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: at '(top level)': expected a mapping")
    schemas.validate(doc, schemas.RESULT, where)
    return doc


def read_result(path: Path, where: str) -> dict[str, Any]:
    doc = read_untrusted(path, where, max_bytes=RESULT_MAX_BYTES)
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: at '(top level)': expected a mapping")
    schemas.validate(doc, schemas.RESULT, where)
    return doc




def snapshot_index_document(index: SnapshotIndex) -> dict[str, Any]:
    return {
        "app": index.app,
        "commit": index.commit,
        "path": index.path,
        "volumes": {k: dict(v) for k, v in sorted(index.volumes.items())},
        "manifest_sha256": index.manifest_sha256,
        "taken_at": index.taken_at,
        "taken_by_run": index.taken_by_run,
    }
