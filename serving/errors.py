"""Errors raised by engines; each carries the HTTP status the API renders it with."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: `status` is the HTTP status, `code` the OpenAI-style error code, `param` the bad field."""

    status: int = 500
    code: str | None = None
    error_type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(EngineError):
    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(EngineError):
    status = 404
    code = "model_not_found"
    error_type = "not_found_error"


class InvalidAdapter(EngineError):
    """An adapter directory failed a check before loading; nothing was changed."""

    status = 400
    code = "invalid_adapter"
    error_type = "invalid_request_error"


class AdapterConflict(EngineError):
    status = 409
    code = "adapter_conflict"
    error_type = "conflict_error"


class EngineUnavailable(EngineError):
    status = 503
    code = "engine_unavailable"
    error_type = "server_error"
