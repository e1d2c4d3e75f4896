"""The one Keycloak client: every call goes through `_call`, which logs masked and raises the
project's errors (temporary: the server is unreachable or failing; permanent: it said no)."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from keycloak.exceptions import KeycloakError

from controller.sso.naming import RealmFacts, check_deletable
from controller.util.errors import ExternalError
from controller.util.log import mask, register_secret
from controller.util.retry import KEYCLOAK, call_with_retries
from controller.util.timeutil import Deadline

log = logging.getLogger(__name__)
T = TypeVar("T")

ADMIN_REALM = "master"


def _status(exc: KeycloakError) -> int | None:
    code = getattr(exc, "response_code", None)
    return code if isinstance(code, int) else None


def _explain(exc: KeycloakError) -> str:
    body = getattr(exc, "response_body", None)
    if isinstance(body, bytes):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            text = doc.get("errorMessage") or doc.get("error_description") or doc.get("error")
            if text:
                return mask(str(text))
        return mask(body.decode(errors="replace")[:300])
    return mask(str(exc)[:300])


def _translate(url: str, what: str, exc: KeycloakError) -> ExternalError:
    from keycloak.exceptions import KeycloakAuthenticationError, KeycloakConnectionError

    status = _status(exc)
    if isinstance(exc, KeycloakConnectionError):
        return ExternalError(f"keycloak at {url}: {what}: cannot connect", command=what,
                             temporary=True)
    if isinstance(exc, KeycloakAuthenticationError) or status == 401:
        return ExternalError(f"keycloak at {url}: {what}: the admin credentials were refused "
                             f"({_explain(exc)})", command=what, returncode=status)
    explained = _explain(exc)
    return ExternalError(
        f"keycloak at {url}: {what} failed ({status}): {explained}",
        command=what, returncode=status, stderr=explained,
        temporary=status is None or status >= 500 or status == 429
        or (status == 400 and explained == TORN_LISTING))


# What Keycloak answers (400) when it cannot write out a listing because a realm in it was
# being deleted (seen with concurrent runs): the server's side of a listing cut short. Only an
# idempotent call is asked again, so only a read ever retries on it.
TORN_LISTING = "Cannot parse the JSON"


class KeycloakAdminClient:
    """Admin access to one Keycloak through its master realm."""

    def __init__(self, url: str, user: str, password: str, *, timeout: int = 30) -> None:
        register_secret(password)
        self.url = url.rstrip("/")
        self._user = user
        self._password = password
        self._timeout = timeout
        self._admin: Any = None

    def _connection(self) -> Any:
        # python-keycloak (and its HTTP stack) costs a quarter of a second to import: only the
        # commands that talk to Keycloak pay it.
        from keycloak import KeycloakAdmin

        if self._admin is None:
            self._admin = KeycloakAdmin(server_url=self.url, username=self._user,
                                        password=self._password, realm_name=ADMIN_REALM,
                                        user_realm_name=ADMIN_REALM, timeout=self._timeout)
        return self._admin

    def _call(self, what: str, fn: Callable[[Any], T], *, retry: bool = False,
              missing_ok: bool = False) -> T | None:
        from keycloak.exceptions import KeycloakError

        def attempt() -> T | None:
            log.debug("keycloak %s: %s", self.url, what)
            try:
                return fn(self._connection())
            except KeycloakError as exc:
                if missing_ok and _status(exc) == 404:
                    return None
                raise _translate(self.url, what, exc) from None
            except (TypeError, ValueError) as exc:
                # python-keycloak could not decode the body: Keycloak cut a listing short while a
                # realm in it was being deleted (seen with concurrent runs). Ask again.
                raise ExternalError(f"keycloak at {self.url}: {what}: unreadable response: "
                                    f"{str(exc)[:200]}", command=what, temporary=True) from None

        # Only an idempotent call is asked again: a create that failed on the way back may
        # have happened.
        return call_with_retries(KEYCLOAK, attempt) if retry else attempt()

    def check_login(self) -> None:
        """Raise unless the admin credentials get a token."""
        self._call("admin login", lambda admin: admin.connection.get_token(), retry=True)

    def realms(self) -> list[RealmFacts]:
        reps = self._call("list realms", lambda admin: admin.get_realms(), retry=True) or []
        return [RealmFacts.from_representation(rep) for rep in reps if isinstance(rep, dict)]

    def realm_exists(self, name: str) -> bool:
        found = self._call(f"get realm {name}", lambda admin: admin.get_realm(name),
                           retry=True, missing_ok=True)
        return found is not None

    def create_realm(self, representation: dict[str, Any]) -> None:
        name = str(representation.get("realm"))
        log.info("keycloak %s: creating realm %s", self.url, name)
        self._call(f"create realm {name}",
                   lambda admin: admin.create_realm(representation, skip_exists=False))

    def delete_realm(self, name: str) -> bool:
        """Delete a per-run realm; False when it was already gone. Refuses master and any
        name outside the per-run scheme (BadInput) before asking the server anything."""
        check_deletable(name)
        gone = self._call(f"delete realm {name}", lambda admin: admin.delete_realm(name),
                          retry=True, missing_ok=True)
        deleted = gone is not None
        log.info("keycloak %s: realm %s %s", self.url, name, "deleted" if deleted else "was already gone")
        return deleted


def probe_ready(url: str, *, timeout: float = 5.0) -> str | None:
    """None when Keycloak answers `/realms/master` with 200; else why not (one sentence)."""
    target = f"{url.rstrip('/')}/realms/{ADMIN_REALM}"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"{target} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{target} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{target} is unreachable ({reason})"


def wait_ready(url: str, deadline: Deadline, *, interval: float = 1.0) -> None:
    """Poll until Keycloak answers; ExternalError (temporary) at the deadline."""
    problem = probe_ready(url)
    while problem is not None:
        if deadline.expired():
            raise ExternalError(f"keycloak did not become ready within {deadline.seconds:.0f} s: "
                                f"{problem}", temporary=True)
        time.sleep(min(interval, max(0.05, deadline.remaining())))
        problem = probe_ready(url)


def password_grant(url: str, realm: str, client_id: str, client_secret: str | None,
                   username: str, password: str) -> dict[str, Any]:
    """The token response of a resource-owner password grant; ExternalError when refused."""
    from keycloak import KeycloakOpenID
    from keycloak.exceptions import KeycloakError

    register_secret(password)
    if client_secret:
        register_secret(client_secret)
    oidc = KeycloakOpenID(server_url=url.rstrip("/"), realm_name=realm, client_id=client_id,
                          client_secret_key=client_secret, timeout=30)
    what = f"password grant for {username} in realm {realm}"
    try:
        token = oidc.token(username, password)
    except KeycloakError as exc:
        raise _translate(url, what, exc) from None
    if not isinstance(token, dict) or "access_token" not in token:
        raise ExternalError(f"keycloak at {url}: {what}: no access token in the answer")
    return token

