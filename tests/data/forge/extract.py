"""Copy the parts of Gitea's and Forgejo's published OpenAPI (Swagger 2.0) documents that ccci
uses into this folder: the operations below, and every definition and response they reach.

    python3 tests/data/forge/extract.py DIR_WITH_THE_PUBLISHED_DOCUMENTS

The documents are `<gitea>/templates/swagger/v1_json.tmpl` of Gitea 1.27.1 and Forgejo 16.0.1
(as served at /swagger.v1.json), MIT licensed; copied "for interoperability".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPERATIONS = {
    "/user": ["get"],
    "/repos/{owner}/{repo}/pulls/{index}": ["get"],
    "/repos/{owner}/{repo}/issues/comments": ["get"],
    "/repos/{owner}/{repo}/issues/{index}/comments": ["get", "post"],
    "/repos/{owner}/{repo}/statuses/{sha}": ["post"],
    "/orgs/{org}/members/{username}": ["get"],
    "/orgs/{org}/teams/search": ["get"],
    "/teams/{id}/members/{username}": ["get"],
    "/repos/{owner}/{repo}/collaborators/{collaborator}/permission": ["get"],
}
# Webhook deliveries are not in the API document; their parts are these definitions.
PAYLOAD_DEFINITIONS = ["Issue", "Comment", "Repository", "User", "PullRequest"]
SOURCES = {"gitea-1.27.1": "gitea-1.27.1.swagger.v1.json", "forgejo-16.0.1": "forgejo-16.0.1.swagger.v1.json"}


def refs(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                found.add(item)
            else:
                found |= refs(item)
    elif isinstance(value, list):
        for item in value:
            found |= refs(item)
    return found


def subset(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: doc[k] for k in ("swagger", "info", "basePath", "consumes", "produces")
                           if k in doc}
    out["paths"] = {path: {m: doc["paths"][path][m] for m in methods} for path, methods in OPERATIONS.items()}
    out["definitions"], out["responses"] = {}, {}
    todo = refs(out["paths"]) | {f"#/definitions/{name}" for name in PAYLOAD_DEFINITIONS}
    while todo:
        ref = todo.pop()
        _, kind, name = ref.split("/", 2)
        if name in out[kind]:
            continue
        out[kind][name] = doc[kind][name]
        todo |= refs(doc[kind][name])
    return out


def main() -> None:
    source = Path(sys.argv[1])
    for name, file in SOURCES.items():
        doc = json.loads((source / file).read_text())
        (Path(__file__).parent / f"{name}.subset.json").write_text(json.dumps(subset(doc), indent=1) + "\n")


if __name__ == "__main__":
    main()
