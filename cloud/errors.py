"""What the cloud's service functions raise when a request cannot be served, with the HTTP answer
each becomes (``app`` turns them into ``{"error": code, "detail": ...}``). Messages are plain
words for the caller and never contain a secret."""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": self.code, "detail": self.detail}


class BadRequest(ServiceError):
    """A body or parameter that does not follow the protocol (400, naming the field)."""


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class EnrolmentRefused(ServiceError):
    """One answer for an unknown, used or expired code (403)."""

    status, code = 403, "enrolment_refused"


class NotFound(ServiceError):
    """No such row in the caller's organisation: another organisation's ids look the same (404)."""

    status, code = 404, "not_found"


class Clash(ServiceError):
    """The request contradicts the stored state: an id or card code already taken, a plan still
    in use (409)."""

    status, code = 409, "conflict"


class CursorExpired(ServiceError):
    """``since`` is older than the purged tombstones or newer than the cloud's version (410)."""

    status, code = 410, "cursor_expired"


class TooLarge(ServiceError):
    """A body over its size limit, or an upload of too many items (413); ``max_items`` is the
    upload limit the device halves its batch towards (None for other bodies)."""

    status, code = 413, "batch_too_large"

    def __init__(self, detail: str, *, max_items: int | None = None) -> None:
        super().__init__(detail)
        self.max_items = max_items

    def body(self) -> dict[str, object]:
        if self.max_items is None:
            return {"error": "too_large", "detail": self.detail}
        return {"error": self.code, "max_items": self.max_items, "detail": self.detail}


class Unavailable(ServiceError):
    """The cloud cannot take the request now and trying again after ``Retry-After`` seconds may
    succeed (503): the database is busy, or this process already has as many device requests in
    flight as it serves in good time."""

    status, code = 503, "unavailable"


class Invalid(ServiceError):
    """Field values that cannot be stored; ``fields`` pairs each dotted field path with what is
    wrong (422)."""

    status, code = 422, "invalid_request"

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {problem}" for path, problem in fields))
        self.fields = fields

    def body(self) -> dict[str, object]:
        return {
            "error": self.code,
            "detail": self.detail,
            "fields": [{"field": path, "problem": problem} for path, problem in self.fields],
        }
