"""Who is using the UI: the login Gradio asks for when an admin password is set, the user behind each event,
the rate limit on generations and votes, and the guard on admin-only actions. Hiding a tab is only
cosmetic; every admin handler checks again (tests/test_ui_access.py calls each event as each role)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import gradio as gr

from feedback.errors import StoreError
from serving.errors import EngineError

from ..auth import Auth, Principal
from ..errors import ApiError

GENERATING: Mapping[str, Any] = MappingProxyType({"concurrency_limit": None})
"""The keyword arguments of an event listener that generates text (chat, arena, rank). Gradio starts it at
once; ChatService's generation gate (hub/limits.py), the one the API goes through, holds it while
--max-concurrent-generations run and refuses it at once, with an error that says so, when
--max-queued-generations already wait. One limit for the API and the UI together."""


def gradio_login(auth: Auth) -> Callable[[str, str], Awaitable[bool]]:
    """The `auth=` callable for gr.mount_gradio_app: "admin" + the admin password, or a rater's password.

    Async, so the scrypt check runs in a thread instead of stalling the event loop."""

    async def login(username: str, password: str) -> bool:
        return await asyncio.to_thread(auth.check_login, username, password)

    return login


def user_of(auth: Auth, request: gr.Request | None) -> Principal:
    """The user an event comes from (`request.username` after a login; the local admin without one)."""
    return auth.ui_principal(getattr(request, "username", None) if request is not None else None)


def admit(auth: Auth, request: gr.Request | None) -> Principal:
    """The user behind a generation or a vote, counted against their rate limit (the bucket their API key
    uses too); over it, an error saying when to retry. The admin is never limited."""
    user = user_of(auth, request)
    try:
        auth.count(user)
    except ApiError as exc:
        raise gr.Error(exc.message) from None
    return user


def require_admin(auth: Auth, request: gr.Request | None) -> Principal:
    user = user_of(auth, request)
    if not user.is_admin:
        raise gr.Error(f"{user.name} is a {user.role}: this needs an admin (sign in as admin)")
    return user


def describe(user: Principal) -> str:
    role = "admin" if user.is_admin else user.role
    logout = "" if user.name == "local" else " · [Log out](/logout)"
    return f"Signed in as **{user.name}** ({role}){logout}"


def on_page_load(auth: Auth, admin_tabs: int) -> Callable:
    """The load handler: who is signed in, and the admin-only tabs shown to admins alone."""

    def load(request: gr.Request):
        user = user_of(auth, request)
        return describe(user), *[gr.update(visible=user.is_admin) for _ in range(admin_tabs)]

    return load


@contextmanager
def shown_to_user() -> Iterator[None]:
    """Errors about the user's input (a bad vote, an unknown model) shown as a Gradio error message."""
    try:
        yield
    except StoreError as exc:
        raise gr.Error(exc.message) from exc
    except EngineError as exc:
        raise gr.Error(exc.message) from exc
