"""The one exception tree of mailfilter.

Each class has exactly one outcome, so callers decide by class, never by message:

- `ConfigError`          refuse to start (exit 2) with one line naming file, key, value, expectation
- `ListFormatError`      refuse a hash list import as a whole (exit 2), nothing changed
- `SkipImage`            skip that image, count it, record the reason on the result
- `TemporaryFailure`     answer 4xx so the sender retries (or accept, if configured fail-open)
- `WorkerFailure`        a worker task did not return (crash, memory limit, deadline): by `reason`
"""

from __future__ import annotations


class MailfilterError(Exception):
    """Base of every error mailfilter raises on purpose."""


class ConfigError(MailfilterError):
    """A setting is missing, unknown or has a bad value: one line per problem (`problems`),
    the message being those lines."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ListFormatError(MailfilterError):
    """A hash list file cannot be read as the format asked for (or as any format, when
    detecting): unknown format, not well-formed XML, a CSV without its header. The whole
    import is refused; nothing is changed in the store."""


class SkipImage(MailfilterError):
    """An image cannot be fingerprinted; `reason` is a stable code used in results and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TemporaryFailure(MailfilterError):
    """Something outside the message failed (next hop, Redis, a worker, the disk)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class WorkerFailure(MailfilterError):
    """A task in the worker pool did not return: the worker died (crash, memory limit), the
    task ran past its deadline, or the service refused the worker's reply. `reason` is
    `worker-crashed`, `memory-limit`, `deadline` or `worker-result-refused`. For an image
    this makes the image unscannable; it never stops the server."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
