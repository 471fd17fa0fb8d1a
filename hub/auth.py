"""Bearer-token checks for the API: the API key guards /v1, the admin password guards admin routes."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from .errors import ApiError


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass(frozen=True)
class Principal:
    role: str  # "admin" | "api" | "anonymous"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Auth:
    """Holds only digests of the secrets; compares in constant time."""

    def __init__(self, api_key: str | None, admin_password: str | None) -> None:
        self._api = _digest(api_key) if api_key else None
        self._admin = _digest(admin_password) if admin_password else None

    def identify(self, request: Request) -> Principal:
        token = _bearer(request)
        given = _digest(token) if token else None
        if given is not None and self._admin is not None and hmac.compare_digest(given, self._admin):
            return Principal("admin")
        if self._api is None:
            # open API; with no admin password set (loopback only) the local user is the admin
            return Principal("admin" if self._admin is None else "api")
        if given is not None and hmac.compare_digest(given, self._api):
            return Principal("admin" if self._admin is None else "api")
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
