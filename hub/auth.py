"""Who is calling: Bearer tokens for the API (the --api-key, a rater's own API key, the admin password) and
the UI login (the admin password for "admin", a rater's password otherwise). Secrets are kept as digests and
compared in constant time; raters' passwords and API keys are checked against their hashes in the store."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from .errors import ApiError

if TYPE_CHECKING:
    from feedback.store import Store

    from .limits import RateLimiter

LOCAL_USER = "local"  # the single user of a hub without an admin password (loopback only): an admin
ADMIN_USER = "admin"  # the UI login name that goes with --admin-password; no rater may take it
API_USER = "api"  # whoever holds the shared --api-key when an admin password is set


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass(frozen=True)
class Principal:
    role: str  # "admin" | "api" | "rater" | "anonymous"
    name: str = LOCAL_USER  # who votes: a rater's name, "admin", "api" or "local"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Auth:
    """Holds only digests of the secrets; compares in constant time."""

    def __init__(
        self,
        api_key: str | None,
        admin_password: str | None,
        store: Store | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._api = _digest(api_key) if api_key else None
        self._admin = _digest(admin_password) if admin_password else None
        self._store = store
        self._limiter = limiter  # every API request is identified once: that is where it is counted

    @property
    def login_required(self) -> bool:
        """The UI asks for a login exactly when an admin password is set."""
        return self._admin is not None

    def _default(self) -> Principal:
        # with no admin password set (loopback only) the local user is the admin
        return Principal("admin", LOCAL_USER) if self._admin is None else Principal("api", API_USER)

    def _rater(self, name: str) -> Principal:
        from feedback.errors import NotFound

        try:
            rater = self._store.get_rater(name) if self._store is not None else None
        except NotFound:
            rater = None
        if rater is None:
            return Principal("anonymous", name)
        return Principal("admin" if rater.role == "admin" else "rater", rater.name)

    def identify(self, request: Request) -> Principal:
        """The caller of an API request; 401 for a wrong key, 429 over the caller's rate limit."""
        principal = self._identify(request)
        self.count(principal)
        return principal

    def count(self, principal: Principal) -> None:
        """Count one request against the caller's rate limit: a 429 ApiError over it. The API counts every
        request here; the UI counts generations and votes, so a rater's key and login share one bucket."""
        if self._limiter is not None:
            self._limiter.check(principal.role, principal.name)

    def _identify(self, request: Request) -> Principal:
        token = _bearer(request)
        given = _digest(token) if token else None
        if given is not None and self._admin is not None and hmac.compare_digest(given, self._admin):
            return Principal("admin", ADMIN_USER)
        if given is not None and self._api is not None and hmac.compare_digest(given, self._api):
            return self._default()
        if token is not None and self._store is not None:
            owner = self._store.api_key_owner(token)  # looked up by its sha256; revoked keys do not match
            if owner is not None:
                return Principal("admin" if owner.role == "admin" else "rater", owner.name)
        if self._api is None:
            return self._default()  # open API
        if token is None:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        raise ApiError(401, "incorrect API key", code="invalid_api_key")

    def require_api(self, request: Request) -> Principal:
        return self.identify(request)

    def require_admin(self, request: Request) -> Principal:
        principal = self.identify(request)
        if not principal.is_admin:
            raise ApiError(403, "this action needs the admin password as the Bearer token", code="forbidden")
        return principal

    # ----- the UI login ----------------------------------------------------------------------------------

    def check_login(self, username: str, password: str) -> bool:
        """The UI login: "admin" with the admin password, or a rater with their own password."""
        if self._admin is None:
            return False
        if username == ADMIN_USER:
            return hmac.compare_digest(_digest(password), self._admin)
        return self._store is not None and self._store.check_password(username, password) is not None

    def ui_principal(self, username: str | None) -> Principal:
        """The principal behind a UI session (``gr.Request.username``); the local admin without a login."""
        if self._admin is None:
            return Principal("admin", LOCAL_USER)
        if username is None:
            return Principal("anonymous", "anonymous")
        if username == ADMIN_USER:
            return Principal("admin", ADMIN_USER)
        return self._rater(username)
