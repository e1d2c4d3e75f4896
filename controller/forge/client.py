"""The one client of the forge's REST API v1 (Gitea and Forgejo share it): every call goes
through `_call`, which logs it masked, retries outages and raises the project's errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from controller.util.errors import ExternalError
from controller.util.log import register_secret
from controller.util.retry import FORGE, call_with_retries

log = logging.getLogger(__name__)

PAGE = 50  # the forge's default page limit; Gitea caps it at MAX_RESPONSE_ITEMS (50)
MAX_PAGES = 200  # a runaway listing must end: 10 000 comments is more than any cursor skips
_NUMBER_IN_URL = re.compile(r"/(?:issues|pulls)/(\d+)$")


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    login: str
    created_at: str
    number: int | None  # the issue or pull request it is on
    on_pull: bool


@dataclass(frozen=True)
class PullRequest:
    number: int
    state: str  # open | closed
    merged: bool
    head_sha: str


def _comment(raw: dict[str, Any]) -> Comment:
    pull_url = str(raw.get("pull_request_url") or "")
    issue_url = str(raw.get("issue_url") or "")
    found = _NUMBER_IN_URL.search(pull_url) or _NUMBER_IN_URL.search(issue_url)
    user = raw.get("user") or {}
    return Comment(id=int(raw["id"]), body=str(raw.get("body") or ""), login=str(user.get("login") or ""),
                   created_at=str(raw.get("created_at") or ""),
                   number=int(found.group(1)) if found else None, on_pull=bool(pull_url))


class ForgeClient:
    """One forge, as one bot user (its token)."""

    def __init__(self, url: str, token: str, *, timeout: float = 15.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        register_secret(token)
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=f"{self.url}/api/v1", timeout=timeout, transport=transport, follow_redirects=False,
            headers={"Authorization": f"token {token}", "Accept": "application/json",
                     "User-Agent": "ccci"})

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None, answers: tuple[int, ...] = (),
              retry: bool = True) -> httpx.Response:
        """The response of one call. 5xx, 429 and connection failures are temporary and retried
        (unless `retry` is off: a call that is not idempotent, whose lost answer may hide that it
        happened); any other 4xx is a refusal and raised at once, unless it is one of `answers`."""
        what = f"{method} {path}"

        def attempt() -> httpx.Response:
            log.debug("forge %s: %s", self.url, what)
            try:
                response = self._http.request(method, path, params=params, json=body)
            except httpx.HTTPError as exc:
                raise ExternalError(f"forge at {self.url}: {what}: {type(exc).__name__}: {exc}",
                                    command=what, temporary=True) from exc
            if response.status_code >= 300 and response.status_code not in answers:
                raise _refusal(self.url, what, response)
            return response

        return call_with_retries(FORGE, attempt) if retry else attempt()

    def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None, absent: tuple[int, ...] = (), retry: bool = True) -> Any:
        """The JSON answer; None for an empty one and for a status in `absent`."""
        response = self._send(method, path, params=params, body=body, answers=absent, retry=retry)
        if response.status_code in absent or response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ExternalError(f"forge at {self.url}: {method} {path}: the answer is not JSON",
                                command=f"{method} {path}", temporary=True) from exc

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for page in range(1, MAX_PAGES + 1):
            items = self._call("GET", path, params={**params, "page": page, "limit": PAGE}) or []
            if not isinstance(items, list):
                raise ExternalError(f"forge at {self.url}: GET {path}: expected a list", command=path)
            yield from (item for item in items if isinstance(item, dict))
            if len(items) < PAGE:
                return

    def whoami(self) -> str:
        """The bot's own login (its comments are never triggers)."""
        user = self._call("GET", "/user") or {}
        return str(user.get("login") or "")

    def pull(self, repo: str, number: int) -> PullRequest | None:
        raw = self._call("GET", f"/repos/{repo}/pulls/{number}", absent=(404,))
        if not isinstance(raw, dict):
            return None
        head = raw.get("head") or {}
        return PullRequest(number=int(raw.get("number") or number), state=str(raw.get("state") or ""),
                           merged=bool(raw.get("merged")), head_sha=str(head.get("sha") or ""))

    def comments_since(self, repo: str, since: str | None) -> list[Comment]:
        """Every comment of the repository's issues and pull requests updated at or after `since`
        (RFC 3339), oldest first."""
        params = {"since": since} if since else {}
        return [_comment(raw) for raw in self._pages(f"/repos/{repo}/issues/comments", params)]

    def pr_comments(self, repo: str, number: int) -> list[Comment]:
        """Every comment of one pull request (this listing is not paged in API v1)."""
        raw = self._call("GET", f"/repos/{repo}/issues/{number}/comments") or []
        return [_comment(item) for item in raw if isinstance(item, dict)]

    def create_comment(self, repo: str, number: int, body: str) -> int:
        """Not retried here: whoever retries must first look whether the comment is there."""
        raw = self._call("POST", f"/repos/{repo}/issues/{number}/comments", body={"body": body},
                         retry=False) or {}
        return int(raw.get("id") or 0)

    def set_status(self, repo: str, sha: str, *, state: str, context: str, description: str,
                   target_url: str | None) -> None:
        body: dict[str, Any] = {"state": state, "context": context, "description": description}
        if target_url:
            body["target_url"] = target_url
        self._call("POST", f"/repos/{repo}/statuses/{sha}", body=body)

    def is_org_member(self, org: str, user: str) -> bool:
        """204: a member. 404, or 303 when the token may not see private membership: not."""
        return self._send("GET", f"/orgs/{org}/members/{user}", answers=(303, 404)).status_code == 204

    def team_id(self, org: str, team: str) -> int | None:
        found = self._call("GET", f"/orgs/{org}/teams/search", params={"q": team}, absent=(404,)) or {}
        for item in found.get("data") or [] if isinstance(found, dict) else []:
            if isinstance(item, dict) and str(item.get("name", "")).lower() == team.lower():
                return int(item["id"])
        return None

    def is_team_member(self, team_id: int, user: str) -> bool:
        return self._send("GET", f"/teams/{team_id}/members/{user}", answers=(404,)).status_code == 200

    def permission(self, repo: str, user: str) -> str:
        """none | read | write | admin | owner."""
        found = self._call("GET", f"/repos/{repo}/collaborators/{user}/permission", absent=(403, 404))
        return str(found.get("permission") or "none") if isinstance(found, dict) else "none"


def _refusal(url: str, what: str, response: httpx.Response) -> ExternalError:
    status = response.status_code
    try:
        detail = response.json().get("message") or response.text
    except (ValueError, AttributeError):
        detail = response.text
    retry_after = response.headers.get("Retry-After")
    temporary = status >= 500 or status == 429
    return ExternalError(
        f"forge at {url}: {what} failed ({status}): {str(detail)[:300]}", command=what, returncode=status,
        stderr=str(detail)[:1000], temporary=temporary,
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
