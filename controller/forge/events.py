"""Webhook deliveries from the forge: the signature check and the `issue_comment` payload,
read as untrusted input (pure functions)."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import jsonschema

from controller.util.errors import BadInput
from controller.util.names import FORGE_REPO

SIGNATURE_HEADERS = ("X-Forgejo-Signature", "X-Gitea-Signature", "X-Hub-Signature-256")
EVENT_HEADERS = ("X-Forgejo-Event", "X-Gitea-Event", "X-GitHub-Event")
COMMENT_EVENTS = ("issue_comment", "pull_request_comment")

# Only the fields ccci reads; anything else in the delivery is ignored, not judged.
_PAYLOAD: dict[str, Any] = {
    "type": "object",
    "required": ["action", "comment", "issue", "repository"],
    "properties": {
        "action": {"type": "string"},
        "is_pull": {"type": ["boolean", "null"]},
        "comment": {
            "type": "object",
            "required": ["id", "body", "user"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "body": {"type": "string", "maxLength": 65536},
                "user": {"type": "object", "required": ["login"],
                         "properties": {"login": {"type": "string", "minLength": 1, "maxLength": 100}}},
                "created_at": {"type": ["string", "null"]},
            },
        },
        "issue": {
            "type": "object",
            "required": ["number"],
            "properties": {
                "number": {"type": "integer", "minimum": 1},
                "state": {"type": ["string", "null"]},
                "pull_request": {"type": ["object", "null"]},
            },
        },
        "repository": {
            "type": "object",
            "required": ["full_name"],
            "properties": {"full_name": {"type": "string", "pattern": FORGE_REPO}},
        },
    },
}


@dataclass(frozen=True)
class CommentEvent:
    """A comment on an issue or pull request, as a webhook or a poll saw it."""

    repo: str  # owner/name
    number: int  # the issue or pull request
    on_pull: bool
    action: str  # created | edited | deleted
    comment_id: int
    body: str
    login: str
    created_at: str


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """HMAC-SHA256 of the raw body, hex (optionally `sha256=`-prefixed), compared in constant time."""
    if not header or not secret:
        return False
    given = header.strip().removeprefix("sha256=").lower()
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.encode("ascii", "replace"), expected.encode())


def parse_comment_event(body: bytes) -> CommentEvent:
    """BadInput (one sentence naming the field) for anything that is not a well-formed
    issue_comment delivery."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"webhook: the body is not JSON: {str(exc)[:120]}") from exc
    validator = jsonschema.Draft202012Validator(_PAYLOAD)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BadInput(f"webhook: at '{where}': {error.message[:200]}")
    issue, comment = doc["issue"], doc["comment"]
    return CommentEvent(
        repo=doc["repository"]["full_name"],
        number=issue["number"],
        on_pull=bool(doc.get("is_pull")) or bool(issue.get("pull_request")),
        action=doc["action"],
        comment_id=comment["id"],
        body=comment["body"],
        login=comment["user"]["login"],
        created_at=str(comment.get("created_at") or ""),
    )
