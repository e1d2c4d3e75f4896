"""A forge for the tests: the Gitea/Forgejo REST API v1 operations ccci uses, served from state a
test sets, recording what ccci posts — and holding every request it receives and every response
it sends to the published OpenAPI document of Gitea 1.27.1 or Forgejo 16.0.1. A request or
response the document does not allow is answered 599 and recorded in `violations`, so a test
fails on it. Also sends signed webhook deliveries, as the forge does."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

DATA = Path(__file__).parent / "data" / "forge"
KINDS = {"gitea": "gitea-1.27.1", "forgejo": "forgejo-16.0.1"}
VIOLATION = 599


def _nullable(schema: Any) -> Any:
    """A real forge answers null for absent objects and times the document does not mark
    nullable: every property of a response may be null."""
    if isinstance(schema, dict):
        out = {k: _nullable(v) for k, v in schema.items()}
        if isinstance(out.get("properties"), dict):
            out["properties"] = {k: {"anyOf": [v, {"type": "null"}]} for k, v in out["properties"].items()}
        return out
    if isinstance(schema, list):
        return [_nullable(v) for v in schema]
    return schema


def _strict(schema: Any) -> Any:
    """What ccci sends must name only what the document declares."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


class OpenApi:
    """One published document: match a request to its operation; check bodies and parameters."""

    def __init__(self, kind: str) -> None:
        self.name = KINDS[kind]
        self.doc = json.loads((DATA / f"{self.name}.subset.json").read_text())
        self.base = self.doc["basePath"]
        self._responses = _nullable(self.doc["definitions"])
        self._requests = _strict(self.doc["definitions"])
        self._routes = []
        for template in self.doc["paths"]:
            pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template))
            self._routes.append((re.compile(f"^{pattern}$"), template))

    def match(self, method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        local = path[len(self.base):] if path.startswith(self.base) else None
        for regex, template in self._routes if local is not None else []:
            found = regex.match(local or "")
            if found and method.lower() in self.doc["paths"][template]:
                return template, self.doc["paths"][template][method.lower()], found.groupdict()
        raise AssertionError(f"{self.name}: no operation {method} {path}")

    def _validate(self, instance: Any, schema: dict[str, Any], definitions: dict[str, Any], what: str) -> None:
        validator = jsonschema.Draft4Validator({**schema, "definitions": definitions})
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            raise AssertionError(f"{self.name}: {what}: at {where}: {error.message[:300]}")

    def check_request(self, method: str, path: str, query: dict[str, list[str]], body: Any,
                      ) -> tuple[str, dict[str, str]]:
        template, op, path_params = self.match(method, path)
        declared = {p["name"]: p for p in op.get("parameters", [])}
        for name, value in path_params.items():
            if declared[name].get("type") == "integer" and not value.isdigit():
                raise AssertionError(f"{self.name}: {method} {template}: path {name}={value!r} is no integer")
        for name, values in query.items():
            spec = declared.get(name)
            if spec is None or spec["in"] != "query":
                raise AssertionError(f"{self.name}: {method} {template}: undeclared query parameter {name!r}")
            if spec.get("type") == "integer" and not all(v.isdigit() for v in values):
                raise AssertionError(f"{self.name}: {method} {template}: {name}={values} is no integer")
        body_spec = next((p for p in declared.values() if p["in"] == "body"), None)
        if body is not None and body_spec is None:
            raise AssertionError(f"{self.name}: {method} {template}: a body where none is declared")
        if body_spec is not None:
            if body is None and body_spec.get("required"):
                raise AssertionError(f"{self.name}: {method} {template}: the body is missing")
            if body is not None:
                self._validate(body, body_spec["schema"], self._requests, f"{method} {template} request body")
        return template, path_params

    def check_response(self, method: str, template: str, status: int, body: Any) -> None:
        responses = self.doc["paths"][template][method.lower()]["responses"]
        spec = responses.get(str(status)) or responses.get("default")
        if spec is None:
            raise AssertionError(f"{self.name}: {method} {template} may not answer {status}")
        if "$ref" in spec:
            spec = self.doc["responses"][spec["$ref"].rsplit("/", 1)[1]]
        schema = spec.get("schema")
        if schema is None:
            return  # undescribed (a real forge sends {"message": …} with its 404s): not judged
        self._validate(body, _nullable(schema), self._responses, f"{method} {template} {status} response")

    def check_definition(self, name: str, instance: Any) -> None:
        self._validate(instance, {"$ref": f"#/definitions/{name}"}, self._responses, f"a delivery's {name}")


@dataclass
class Repo:
    full_name: str
    id: int
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)  # number → {state, merged, sha, ref}
    collaborators: dict[str, str] = field(default_factory=dict)  # login → permission


STAMP = "2026-12-02T{:02d}:{:02d}:{:02d}Z"


class FakeForge:
    """State, records and fault injection; `url` is the forge's base URL."""

    def __init__(self, kind: str = "gitea", *, token: str = "t0ken-of-the-bot", bot: str = "ccci-bot") -> None:
        self.kind = kind
        self.api = OpenApi(kind)
        self.token = token
        self.bot = bot
        self.users: dict[str, int] = {bot: 1}
        self.repos: dict[str, Repo] = {}
        self.orgs: dict[str, set[str]] = {}
        self.teams: dict[int, tuple[str, str, set[str]]] = {}  # id → (org, name, members)
        self.comments: list[dict[str, Any]] = []  # every comment, as the API shows it
        self.statuses: list[dict[str, Any]] = []  # (repo, sha) + what ccci posted, in order
        self.requests: list[str] = []
        self.violations: list[str] = []
        self.failures: list[int] = []  # the next requests are answered with these statuses
        self.lose_next_comment_answer = False  # make the comment, then answer 502 (injected, not judged)
        self._ids = itertools.count(100)
        self._seconds = itertools.count(0)
        # Comment times from the real clock, one second apart: a cursor in real time sees them.
        self._base = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeForge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- state a test sets ---------------------------------------------------------------------

    def user(self, login: str) -> int:
        return self.users.setdefault(login, len(self.users) + 1)

    def repo(self, full_name: str) -> Repo:
        return self.repos.setdefault(full_name, Repo(full_name, len(self.repos) + 10))

    def pull(self, full_name: str, number: int, sha: str, *, state: str = "open", merged: bool = False) -> None:
        self.repo(full_name).pulls[number] = {"state": state, "merged": merged, "sha": sha, "ref": f"pr-{number}"}

    def org(self, name: str, *members: str) -> None:
        self.orgs.setdefault(name, set()).update(members)
        for member in members:
            self.user(member)

    def team(self, org: str, name: str, *members: str) -> int:
        team_id = 500 + len(self.teams)
        self.teams[team_id] = (org, name, set(members))
        self.org(org)
        return team_id

    def fail(self, *statuses: int) -> None:
        with self._lock:
            self.failures.extend(statuses)

    # -- objects as the API renders them ---------------------------------------------------------

    def _user(self, login: str) -> dict[str, Any]:
        return {"id": self.user(login), "login": login, "login_name": "", "full_name": login, "email":
                f"{login}@forge.test", "avatar_url": "", "html_url": f"{self.url}/{login}", "language": "",
                "is_admin": False, "last_login": "0001-01-01T00:00:00Z", "created": STAMP.format(0, 0, 0),
                "restricted": False, "active": True, "prohibit_login": False, "location": "", "website": "",
                "description": "", "visibility": "public", "followers_count": 0, "following_count": 0,
                "starred_repos_count": 0, "username": login}

    def _repository(self, full_name: str) -> dict[str, Any]:
        owner, name = full_name.split("/")
        return {"id": self.repo(full_name).id, "owner": self._user(owner), "name": name, "full_name": full_name,
                "description": "", "empty": False, "private": False, "fork": False, "template": False,
                "parent": None, "mirror": False, "size": 1, "html_url": f"{self.url}/{full_name}",
                "clone_url": f"{self.url}/{full_name}.git", "default_branch": "main", "archived": False,
                "created_at": STAMP.format(0, 0, 0), "updated_at": STAMP.format(0, 0, 0), "permissions": None,
                "internal_tracker": None, "external_tracker": None, "external_wiki": None, "repo_transfer": None}

    def _pull(self, full_name: str, number: int) -> dict[str, Any]:
        pr = self.repo(full_name).pulls[number]
        branch = {"label": pr["ref"], "ref": pr["ref"], "sha": pr["sha"], "repo_id": self.repo(full_name).id,
                  "repo": self._repository(full_name)}
        return {"id": number + 1000, "url": f"{self.url}/{full_name}/pulls/{number}", "number": number,
                "user": self._user("someone"), "title": f"PR {number}", "body": "", "labels": [],
                "milestone": None, "assignee": None, "assignees": None, "state": pr["state"], "is_locked": False,
                "comments": 0, "html_url": f"{self.url}/{full_name}/pulls/{number}", "diff_url": "",
                "patch_url": "", "mergeable": True, "merged": pr["merged"], "merged_at": None,
                "merge_commit_sha": None, "merged_by": None, "allow_maintainer_edit": False,
                "base": {**branch, "label": "main", "ref": "main", "sha": "0" * 40}, "head": branch,
                "merge_base": "0" * 40, "due_date": None, "created_at": STAMP.format(0, 0, 0),
                "updated_at": STAMP.format(0, 0, 0), "closed_at": None, "pin_order": 0}

    def _issue(self, full_name: str, number: int) -> dict[str, Any]:
        pr = self.repo(full_name).pulls.get(number)
        return {"id": number + 2000, "url": f"{self.url}/api/v1/repos/{full_name}/issues/{number}",
                "html_url": f"{self.url}/{full_name}/issues/{number}", "number": number,
                "user": self._user("someone"), "original_author": "", "original_author_id": 0, "title": "t",
                "body": "", "ref": "", "labels": [], "milestone": None, "assignee": None, "assignees": None,
                "state": pr["state"] if pr else "open", "is_locked": False, "comments": 0,
                "created_at": STAMP.format(0, 0, 0), "updated_at": STAMP.format(0, 0, 0), "closed_at": None,
                "due_date": None, "pull_request": ({"merged": pr["merged"], "merged_at": None, "draft": False,
                                                    "html_url": f"{self.url}/{full_name}/pulls/{number}"}
                                                   if pr else None),
                "repository": {"id": self.repo(full_name).id, "name": full_name.split("/")[1],
                               "owner": full_name.split("/")[0], "full_name": full_name}}

    def add_comment(self, full_name: str, number: int, login: str, body: str) -> dict[str, Any]:
        with self._lock:
            stamp = (self._base + dt.timedelta(seconds=next(self._seconds))).strftime("%Y-%m-%dT%H:%M:%SZ")
            is_pull = number in self.repo(full_name).pulls
            comment = {"id": next(self._ids), "html_url": f"{self.url}/{full_name}/issues/{number}#c",
                       "pull_request_url": f"{self.url}/{full_name}/pulls/{number}" if is_pull else "",
                       "issue_url": f"{self.url}/{full_name}/issues/{number}", "user": self._user(login),
                       "original_author": "", "original_author_id": 0, "body": body, "assets": [],
                       "created_at": stamp, "updated_at": stamp, "_repo": full_name, "_number": number}
            self.comments.append(comment)
            return comment

    def _shown(self, comment: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in comment.items() if not k.startswith("_")}

    def posted_comments(self, full_name: str, number: int) -> list[str]:
        """Bodies of the bot's comments on one PR."""
        return [c["body"] for c in self.comments
                if c["_repo"] == full_name and c["_number"] == number and c["user"]["login"] == self.bot]

    def statuses_of(self, sha: str) -> list[tuple[str, str]]:
        return [(s["context"], s["state"]) for s in self.statuses if s["sha"] == sha]

    # -- webhooks ------------------------------------------------------------------------------

    def delivery(self, full_name: str, number: int, login: str, body: str, *, action: str = "created",
                 comment: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `issue_comment` payload the forge sends for a (new) comment."""
        comment = comment or self.add_comment(full_name, number, login, body)
        payload = {"action": action, "issue": self._issue(full_name, number), "comment": self._shown(comment),
                   "repository": self._repository(full_name), "sender": self._user(login),
                   "is_pull": number in self.repo(full_name).pulls}
        for name, part in (("Issue", payload["issue"]), ("Comment", payload["comment"]),
                           ("Repository", payload["repository"]), ("User", payload["sender"])):
            self.api.check_definition(name, part)
        return payload

    def send(self, url: str, secret: str, payload: dict[str, Any] | bytes, *, signature: str | None = None,
             event: str = "issue_comment") -> tuple[int, str]:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sig = signature if signature is not None else hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        prefix = "Forgejo" if self.kind == "forgejo" else "Gitea"
        headers = {"Content-Type": "application/json", f"X-{prefix}-Event": event,
                   f"X-{prefix}-Delivery": "d-1", f"X-{prefix}-Signature": sig}
        if self.kind == "forgejo":  # Forgejo sends Gitea's headers too
            headers.update({"X-Gitea-Event": event, "X-Gitea-Signature": sig})
        request = urllib.request.Request(url, data=raw, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except urllib.error.URLError as exc:
            # A receiver that refuses a huge body closes the connection before it is all sent.
            return 0, f"connection closed: {exc.reason}"

    # -- the API -------------------------------------------------------------------------------

    def _route(self, method: str, template: str, params: dict[str, str], query: dict[str, list[str]],
               body: Any, login: str) -> tuple[int, Any]:
        def one(name: str) -> str | None:
            return query.get(name, [None])[0]

        repo = f"{params.get('owner')}/{params.get('repo')}"
        if template == "/user":
            return 200, self._user(login)
        if template == "/repos/{owner}/{repo}/pulls/{index}":
            number = int(params["index"])
            if repo not in self.repos or number not in self.repos[repo].pulls:
                return 404, {"message": "not found", "url": self.url, "errors": None}
            return 200, self._pull(repo, number)
        if template == "/repos/{owner}/{repo}/issues/comments":
            since = one("since") or ""
            found = [c for c in self.comments if c["_repo"] == repo and c["updated_at"] >= since]
            return 200, self._page(found, query)
        if template == "/repos/{owner}/{repo}/issues/{index}/comments":
            number = int(params["index"])
            if method == "GET":
                return 200, self._page([c for c in self.comments if c["_repo"] == repo and c["_number"] == number],
                                       query)
            return 201, self._shown(self.add_comment(repo, number, login, body["body"]))
        if template == "/repos/{owner}/{repo}/statuses/{sha}":
            status = {"id": len(self.statuses) + 1, "state": body.get("state"),
                      "target_url": body.get("target_url", ""), "description": body.get("description", ""),
                      "url": "", "context": body.get("context", ""),
                      "creator": self._user(login), "created_at": STAMP.format(0, 0, 0),
                      "updated_at": STAMP.format(0, 0, 0)}
            self.statuses.append({**status, "sha": params["sha"], "repo": repo})
            return 201, status
        if template == "/orgs/{org}/members/{username}":
            return (204 if params["username"] in self.orgs.get(params["org"], set()) else 404), None
        if template == "/orgs/{org}/teams/search":
            teams = [{"id": tid, "name": name, "description": "", "permission": "write", "units": [],
                      "units_map": {}, "can_create_org_repo": False, "includes_all_repositories": False,
                      "organization": None}
                     for tid, (org, name, _) in self.teams.items()
                     if org == params["org"] and (one("q") or "").lower() in name.lower()]
            return 200, {"ok": True, "data": teams}
        if template == "/teams/{id}/members/{username}":
            team = self.teams.get(int(params["id"]))
            if team is None or params["username"] not in team[2]:
                return 404, {"message": "not found", "url": self.url, "errors": None}
            return 200, self._user(params["username"])
        if template == "/repos/{owner}/{repo}/collaborators/{collaborator}/permission":
            permission = self.repo(repo).collaborators.get(params["collaborator"])
            if permission is None:
                return 404, {"message": "not a collaborator", "url": self.url, "errors": None}
            return 200, {"permission": permission, "role_name": permission, "user": self._user(params["collaborator"])}
        raise AssertionError(f"no handler for {template}")

    def _page(self, items: list[dict[str, Any]], query: dict[str, list[str]]) -> list[dict[str, Any]]:
        page = int(query.get("page", ["1"])[0])
        limit = int(query.get("limit", ["30"])[0])
        return [self._shown(c) for c in items[(page - 1) * limit: page * limit]]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _serve(self, method: str) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                forge.requests.append(f"{method} {split.path}")
                status, answer = self._answer(method, split.path, parse_qs(split.query), raw)
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> tuple[int, Any]:
                with forge._lock:
                    if self.headers.get("Authorization") != f"token {forge.token}":
                        return 401, {"message": "token is required", "url": forge.url}
                    if forge.failures:
                        return forge.failures.pop(0), {"message": "injected failure", "url": forge.url}
                    try:
                        body = json.loads(raw) if raw else None
                        template, params = forge.api.check_request(method, path, query, body)
                        status, answer = forge._route(method, template, params, query, body, forge.bot)
                        forge.api.check_response(method, template, status, answer)
                        if forge.lose_next_comment_answer and method == "POST" and template.endswith("/comments"):
                            # A proxy between ccci and the forge: the comment is made, its answer lost.
                            forge.lose_next_comment_answer = False
                            return 502, {"message": "bad gateway", "url": forge.url}
                    except (AssertionError, ValueError, KeyError) as exc:
                        forge.violations.append(f"{method} {path}: {exc}")
                        return VIOLATION, {"message": str(exc)[:500]}
                    return status, answer

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler


def forges() -> Iterator[str]:
    yield from KINDS
