"""The webhook receiver as a WSGI app on waitress: size cap, signature before parsing, and an
answer that says what became of the delivery. What a comment means is the handler's business."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import waitress
from waitress.server import BaseWSGIServer, MultiSocketServer

from controller.forge.events import (
    COMMENT_EVENTS,
    EVENT_HEADERS,
    SIGNATURE_HEADERS,
    CommentEvent,
    parse_comment_event,
    signature_ok,
)
from controller.util.errors import BadInput, CcciError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # a comment is at most 64 KiB; the rest of a delivery is metadata


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


# Takes a verified, parsed delivery; answers once the request commit is made (or why not).
Handler = Callable[[CommentEvent], Answer]
StartResponse = Callable[..., Any]

_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 411: "Length Required", 413: "Content Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _header(environ: dict[str, Any], names: Iterable[str]) -> str | None:
    for name in names:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        if value:
            return str(value)
    return None


def webhook_app(secret: bytes, handle: Handler, *, max_body: int = MAX_BODY_BYTES) -> Callable[..., Any]:
    """A WSGI app: POST a delivery to any path; GET /healthz answers 200."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        answer = _answer(environ)
        body = (answer.text + "\n").encode()
        start_response(f"{answer.status} {_REASONS.get(answer.status, 'Status')}",
                       [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    def _answer(environ: dict[str, Any]) -> Answer:
        method = environ.get("REQUEST_METHOD", "")
        if method == "GET" and environ.get("PATH_INFO") == "/healthz":
            return Answer(200, "ok")
        if method != "POST":
            return Answer(405, "POST a webhook delivery")
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return Answer(411, "a Content-Length is required")
        if length < 0 or length > max_body:
            return Answer(413, f"the body is over {max_body} bytes")
        raw = environ["wsgi.input"].read(length)
        # Nothing of the body is looked at before its signature holds.
        if not signature_ok(secret, raw, _header(environ, SIGNATURE_HEADERS)):
            return Answer(401, "bad or missing signature")
        event_type = _header(environ, EVENT_HEADERS)
        if event_type not in COMMENT_EVENTS:
            return Answer(202, f"ignored: event {event_type!r} is not a comment")
        try:
            event = parse_comment_event(raw)
        except BadInput as exc:
            return Answer(400, exc.message)
        try:
            return handle(event)
        except CcciError as exc:
            log.error("webhook: comment %s on %s#%s: %s", event.comment_id, event.repo, event.number,
                      exc.message)
            return Answer(503, f"not filed, try again: {exc.message[:300]}")
        except Exception:
            log.exception("webhook: unexpected error handling comment %s", event.comment_id)
            return Answer(500, "unexpected error; see the controller's log")

    return app


def make_server(app: Callable[..., Any], host: str, port: int, *,
                threads: int = 4) -> BaseWSGIServer | MultiSocketServer:
    """A waitress server bound now (port 0: any free one; `effective_port` tells which)."""
    return waitress.create_server(app, host=host, port=port, threads=threads, ident="ccci",
                                  max_request_body_size=MAX_BODY_BYTES, clear_untrusted_proxy_headers=True)
