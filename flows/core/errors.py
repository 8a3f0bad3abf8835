"""The one error convention: every error sift raises on purpose is a :class:`SiftError`.

It carries a machine ``reason`` (snake_case, e.g. ``bad_config``, ``decode_error``, ``http_404``) and a
human message. The CLI prints any of them as one line ``sift STAGE: error: MESSAGE`` and exits 2;
library code never raises ``SystemExit``. Each stage's errors subclass it (ConfigError, IngestError,
VideoError, FetchError, Reject, LabelError, BackboneError, QueueError), so a caller that wants "a
sift error, whatever the stage" catches one class, and one that wants a stage's catches that one.
HTTP answers are :class:`HttpError` (status, reason, message), the same for the API and the review app.
"""
from __future__ import annotations


class SiftError(Exception):
    """A reason code and a message. Subclasses set a default ``reason``; an instance may pass its own.

    ``SiftError("need labeled items", reason="no_labeled_items")``; ``str(err)`` is the message.
    """

    reason: str = "error"

    def __init__(self, message: str = "", *, reason: str | None = None):
        super().__init__(message or reason or self.reason)
        if reason:
            self.reason = reason


class ReasonError(SiftError):
    """An error whose reason code comes first, with an optional detail: ``ReasonError("too_large",
    "12 MB > 10 MB")``; ``str(err)`` is ``"too_large: 12 MB > 10 MB"``. Media and fetch errors use it,
    their reasons being the rejection codes of ``flows.core.schema.REJECT_REASONS`` / ``flows.scrape.urls.REASONS``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason, reason=reason)
        self.detail = detail


class HttpError(SiftError):
    """A request refused over HTTP: ``status`` (4xx, 503), a machine ``code`` (the reason) and a message.
    Its JSON body is ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message, reason=code)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}
