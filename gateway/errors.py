"""The errors a client can see. Each maps to one RFC 9457 problem type, at one place
(``functions.api.problems``); the core raises them, handlers never invent status codes."""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "/problems/"


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.headers = headers or {}
        self.extensions = extensions

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


class MalformedRequestError(GatewayError):
    status, slug, title = 400, "malformed-request", "Malformed request"


class UnauthenticatedError(GatewayError):
    status, slug, title = 401, "unauthenticated", "Missing or invalid credentials"


class ForbiddenError(GatewayError):
    status, slug, title = 403, "forbidden", "Not allowed"


class NotFoundError(GatewayError):
    status, slug, title = 404, "not-found", "Not found"


class ModelNotFoundError(NotFoundError):
    slug, title = "model-not-found", "Unknown model"


class MethodNotAllowedError(GatewayError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class NotAcceptableError(GatewayError):
    status, slug, title = 406, "not-acceptable", "The requested output type is not offered"


class ConflictError(GatewayError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLargeError(GatewayError):
    status, slug, title = 413, "payload-too-large", "Payload too large for a synchronous call"


class UnsupportedMediaTypeError(GatewayError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported content type"


class SchemaMismatchError(GatewayError):
    status, slug, title = 422, "schema-mismatch", "Input does not match the model's schema"


class InvalidRequestError(GatewayError):
    status, slug, title = 422, "invalid-request", "The request does not match the API's schema"


class InvalidPolicyError(GatewayError):
    status, slug, title = 422, "invalid-policy", "The policy document is invalid"


class RateLimitedError(GatewayError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class BackendError(GatewayError):
    """The model backend answered, but with a failure that is not the client's fault."""

    status, slug, title = 502, "backend-error", "Model backend failed"


class BackendUnavailableError(GatewayError):
    status, slug, title = 503, "backend-unavailable", "No backend can serve the request now"


class BackendTimeoutError(GatewayError):
    status, slug, title = 504, "backend-timeout", "Model backend timed out"


class DependencyUnavailableError(GatewayError):
    """A store the gateway needs (policies, keys) could not be reached."""

    status, slug, title = 503, "dependency-unavailable", "A gateway dependency is unavailable"


def all_problem_types() -> list[type[GatewayError]]:
    """Every concrete problem type, for the documentation route and the OpenAPI spec."""
    seen: list[type[GatewayError]] = []
    stack: list[type[GatewayError]] = [GatewayError]
    while stack:
        cls = stack.pop(0)
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen
