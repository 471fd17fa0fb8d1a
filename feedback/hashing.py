"""Password and API-key hashing for the raters table: scrypt for passwords, sha256 for random API keys.

Passwords are low-entropy, so they get a salted, memory-hard hash (``hashlib.scrypt``). API keys are 32
random bytes, so a plain sha256 is enough and lets a key be looked up by its hash in one indexed query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
API_KEY_PREFIX = "th-"


def hash_password(password: str) -> str:
    """Return ``scrypt$n$r$p$salt$hash`` (base64 fields) for ``password``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
    )
    return hmac.compare_digest(actual, expected)


def new_api_key() -> str:
    """A fresh API key: ``th-`` followed by 43 url-safe characters (32 random bytes)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The stored form of an API key: hex sha256."""
    return hashlib.sha256(key.encode()).hexdigest()
