"""Keeping the in-memory index in step with the store, without restarts.

`watch_version` is the async helper: it yields the store's version whenever it differs
from what the caller holds, woken by the store's change notification (Redis pub/sub; the
local store polls its database) and in any case polling every `interval` seconds, so a
lost notification only delays a reload. While notifications fail (the subscription's
server died, or pub/sub is refused) it polls every second instead, and subscribes again
each time: after a Redis failover, a change is live within seconds.

`LiveIndex` holds the current `HashIndex` for the scanner: a background task follows
`watch_version`, builds a new index in a worker thread (off the event loop) and swaps the
reference (readers keep whichever index they fetched with `current()`). When the store is
unreachable or a load fails it keeps serving the last index it loaded and says so:
`stale`, `last_error`; it logs once per change of state, not per message. A store that
suddenly reports version 0 after lists were loaded (a Redis restarted without
persistence, or flushed) is treated as an error, not as "no lists": the loaded lists stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Final

from mailfilter.errors import TemporaryFailure

if TYPE_CHECKING:
    from mailfilter.matching.index import HashIndex
    from mailfilter.matching.store import HashStore

__all__ = ["LiveIndex", "watch_version"]

log = logging.getLogger("mailfilter.matching.live")

WAIT_STEP: Final = 1.0
"""Longest single blocking wait in a worker thread, so stopping never waits longer."""

RETRY_AFTER: Final = 1.0
"""After a failed check or subscription, try again this soon (or after `interval` when
that is shorter), not after a whole `interval`: a Redis failover (Sentinel, Cluster) is
over in a few seconds, and a list changed right after it must be live within seconds."""


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, TemporaryFailure) else f"{type(exc).__name__}: {text}"


async def watch_version(
    store: HashStore,
    interval: float,
    *,
    known: Callable[[], int | None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_ok: Callable[[int], None] | None = None,
) -> AsyncIterator[int]:
    """Yield the store's version whenever it differs from `known()` (default: the last
    version yielded): at once, then after each change notification or poll.

    `on_ok(version)` is called after every successful check, `on_error(exc)` after every
    failed one (the store is unreachable); checking goes on every `interval` seconds.
    """
    last: int | None = None
    held = known if known is not None else (lambda: last)
    interval = max(0.05, interval)
    retry = min(interval, RETRY_AFTER)
    while True:
        try:
            version = await asyncio.to_thread(store.version)
        except Exception as exc:  # the store's errors are TemporaryFailure; anything else too
            if on_error is not None:
                on_error(exc)
            await asyncio.sleep(retry)
            continue
        if on_ok is not None:
            on_ok(version)
        if version != held():
            last = version
            yield version
            continue  # check again at once: the consumer may not have caught up
        deadline = time.monotonic() + interval
        while (left := deadline - time.monotonic()) > 0:
            try:
                if await asyncio.to_thread(store.wait_for_change, min(left, WAIT_STEP)):
                    break
            except Exception as exc:
                # No notifications (pub/sub down, refused, or its server failed over):
                # poll the version every `retry` seconds meanwhile, and subscribe again
                # each time (a new subscription says "maybe changed"). Reading the version
                # is also what lets a cluster client learn the new slot map: the
                # subscription alone would keep going to the dead master.
                log.debug("change notifications unavailable: %s", _describe(exc))
                await asyncio.sleep(min(left, retry))
                break


class LiveIndex:
    """The current index, reloaded in the background when the store's version changes."""

    def __init__(self, store: HashStore, reload_interval: float) -> None:
        self._store = store
        self._interval = reload_interval
        self._index: HashIndex | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Event | None = None
        self.last_error: str | None = None
        self.stale = False
        self.loaded_at: float | None = None
        self.load_seconds: float | None = None
        self._load_retry = 0.0  # seconds until a failed load is tried again (doubling)

    # -- what the scanner and metrics read --
    def current(self) -> HashIndex:
        """The last index loaded; TemporaryFailure when none could be loaded yet."""
        index = self._index
        if index is None:
            raise TemporaryFailure("index-not-loaded", self.last_error or "still loading")
        return index

    @property
    def version(self) -> int:
        """Version of the index being served (0: none loaded yet)."""
        index = self._index
        return index.version if index is not None else 0

    @property
    def loaded(self) -> bool:
        return self._index is not None

    # -- life cycle --
    async def start(self, wait: float | None = None) -> None:
        """Start following the store; wait up to `wait` seconds (None: until it is done)
        for the first load attempt, successful or not."""
        if self._task is not None:
            return
        self._first_attempt = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mailfilter-live-index")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), wait)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> LiveIndex:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the background task --
    def _attempted(self) -> None:
        if self._first_attempt is not None:
            self._first_attempt.set()

    def _failed(self, exc: BaseException) -> None:
        message = _describe(exc)
        if not self.stale:
            if self._index is not None:
                log.warning(
                    "hash store unavailable, serving the lists loaded before",
                    extra={"fields": {"version": self.version, "error": message}},
                )
            else:
                log.error("hash store unavailable, no lists loaded",
                          extra={"fields": {"error": message}})
        self.stale = True
        self.last_error = message
        self._attempted()

    def _checked(self, version: int) -> None:
        if self.stale and self._index is not None and version == self._index.version:
            self._recovered()

    def _recovered(self) -> None:
        if self.stale:
            log.info("hash store reachable again", extra={"fields": {"version": self.version}})
        self.stale = False
        self.last_error = None

    def _load(self) -> tuple[HashIndex, float]:
        started = time.monotonic()
        index = self._store.load_index()
        return index, time.monotonic() - started

    async def _run(self) -> None:
        held = lambda: self._index.version if self._index is not None else None  # noqa: E731
        async for version in watch_version(self._store, self._interval, known=held,
                                           on_error=self._failed, on_ok=self._checked):
            if version == 0 and self._index is not None and self._index.version > 0:
                self._failed(TemporaryFailure(
                    "store-empty",
                    "the store says version 0 (emptied, or restarted without persistence); "
                    "keeping the lists loaded before",
                ))
                await asyncio.sleep(self._interval)
                continue
            if self._index is not None and 0 < version < self._index.version:
                # A failover to a replica that missed the last commits: that version
                # number would be given again to a different change, and verdicts cached
                # under it would be taken for the new lists. Move the store past it; the
                # next check loads what the store holds, under the new number.
                log.warning("the store's version went back (a failover lost the last "
                            "changes); raising it", extra={"fields": {
                                "version": version, "loaded": self._index.version}})
                try:
                    raised = await asyncio.to_thread(self._store.raise_version,
                                                     self._index.version)
                except Exception as exc:
                    self._failed(exc)
                    await asyncio.sleep(min(self._interval, RETRY_AFTER))
                    continue
                if raised > self._index.version:
                    continue  # the next check sees the raised version and loads
                # A store that keeps its number (the local one, a database file put back):
                # load what it holds, under the number it has.
            try:
                index, seconds = await asyncio.to_thread(self._load)
            except Exception as exc:
                self._failed(exc)
                # Soon, not after a whole interval: the first load after a failover may
                # fail while the cluster settles, and the lists must not stay stale long.
                self._load_retry = min(self._interval, max(RETRY_AFTER, 2 * self._load_retry))
                await asyncio.sleep(self._load_retry)
                continue
            self._load_retry = 0.0
            self._index = index  # the swap: one reference assignment
            self.loaded_at = time.time()
            self.load_seconds = seconds
            log.info("hash lists loaded", extra={"fields": {
                "version": index.version, "entries": len(index), "seconds": round(seconds, 3),
            }})
            self._recovered()
            self._attempted()
