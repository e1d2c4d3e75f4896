"""sso-app fixture: a page, a health endpoint, and /sso, which proves from inside the stack
that the run's realm answers: OIDC discovery and a password grant for the run's user."""

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def fetch(url, data=None):
    body = urllib.parse.urlencode(data).encode() if data else None
    with urllib.request.urlopen(url, data=body, timeout=10) as response:
        return json.loads(response.read())


def claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def sso_report():
    base = os.environ.get("SSO_STACK_URL", "")
    realm = os.environ.get("SSO_REALM", "")
    report = {"stack_url": base, "realm": realm}
    if not base:
        report["skipped"] = "no Keycloak URL reachable from the stack was given"
        return report
    realm_url = f"{base}/realms/{realm}"
    try:
        report["issuer"] = fetch(f"{realm_url}/.well-known/openid-configuration")["issuer"]
        # The token endpoint by the stack's own address: discovery names the public one.
        token = fetch(f"{realm_url}/protocol/openid-connect/token", {
            "grant_type": "password",
            "client_id": os.environ["SSO_CLIENT_ID"],
            "client_secret": os.environ["SSO_CLIENT_SECRET"],
            "username": os.environ["SSO_USER"],
            "password": os.environ["SSO_PASSWORD"],
            "scope": "openid",
        })
        report["token_user"] = claims(token["access_token"]).get("preferred_username")
    except (OSError, KeyError, ValueError, urllib.error.URLError) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    return report


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            self.reply(200, "text/plain", b"ok\n")
        elif self.path == "/sso":
            self.reply(200, "application/json", json.dumps(sso_report()).encode())
        else:
            self.reply(200, "text/html", b"<h1>sso-app fixture v1</h1>\n")

    def reply(self, status, kind, body):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
