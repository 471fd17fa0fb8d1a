"""API errors in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`, and their handlers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from feedback.errors import StoreError
from serving.errors import EngineError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class ApiError(Exception):
    """Raise from a route; rendered as the OpenAI error envelope with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers  # e.g. Retry-After on a 429


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None, kind: str | None = None
) -> dict:
    return {
        "error": {
            "message": message,
            "type": kind or _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None, **fields
) -> JSONResponse:
    headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})}
    return JSONResponse(error_body(status, message, **fields), status_code=status, headers=headers or None)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    problems, first_param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            loc = []
        param = ".".join(loc) or None
        first_param = first_param or param
        if err.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            continue
        if err.get("type") == "extra_forbidden":
            problems.append(f"{param}: unrecognized request argument")
            continue
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        problems.append(f"{param or 'body'}: {msg}{shown}")
    return "; ".join(problems[:5]) or "invalid request", first_param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError):
        return error_response(
            exc.status,
            exc.message,
            param=exc.param,
            code=exc.code,
            kind=exc.error_type,
            headers=getattr(exc, "headers", None),  # Retry-After of hub.limits.ServerBusy
        )

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError):
        if exc.status >= 500:  # a full disk or a damaged file: the operator must act, so it goes in the log
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param = _describe_validation(exc)
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}")
        if exc.status_code == 413:  # hub.limits.BodyLimit
            return error_response(413, str(exc.detail), code="request_too_large")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; the server log has the details")
