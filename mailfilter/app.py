"""`mailfilter serve`: settings -> worker pool, hash store + live index, verdict cache,
scanner, one message handler, the front ends that share it (SMTP proxy and/or milter:
`smtp.listen`, `milter.listen`; at least one), metrics; then signals.

- SIGTERM / SIGINT: stop accepting connections, let messages in flight finish (up to
  `smtp.shutdown_timeout`, proxy and milter alike), close everything, exit 0.
- SIGHUP: read the settings file again; policy, quarantine, match thresholds, limits,
  allowed clients, next hop and logging take effect for the next message (a bad file is
  logged and ignored, the old settings stay); the hash lists are checked for a new version
  at once. Listening addresses, protocol, TLS files and worker settings need a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Final

from mailfilter.actions.next_hop_check import warn_if_unreachable
from mailfilter.actions.quarantine import QuarantineStore
from mailfilter.actions.relay import RelayPool, local_hostname
from mailfilter.actions.report import ReportSender
from mailfilter.errors import ConfigError
from mailfilter.frontend.base import FrontEnd
from mailfilter.frontend.milter import MilterServer
from mailfilter.frontend.smtp import SmtpProxy
from mailfilter.handling import MessageHandler
from mailfilter.logs import setup_logging
from mailfilter.matching.backends import open_store
from mailfilter.matching.cache import VerdictCache, open_cache, settings_namespace
from mailfilter.matching.live import LiveIndex
from mailfilter.matching.store import BaseHashStore
from mailfilter.metrics import HealthSource, Metrics, MetricsServer
from mailfilter.sandbox import SandboxUnavailable
from mailfilter.scanner import Scanner
from mailfilter.settings import LoadedSettings, Settings, load_settings, service_problems
from mailfilter.workers import PoolStats, WorkerPool

__all__ = ["App", "serve"]

log = logging.getLogger("mailfilter.app")

FIRST_LOAD_WAIT: Final = 30.0  # seconds to wait for the lists before listening anyway
RESTART_KEYS: Final = (("smtp", "listen"), ("smtp", "protocol"), ("smtp", "tls_cert"),
                       ("smtp", "tls_key"), ("smtp", "hostname"), ("metrics", "listen"),
                       ("workers", "processes"), ("workers", "memory_limit"),
                       ("workers", "max_tasks_per_worker"), ("workers", "sandbox"),
                       ("milter", "listen"))


class App:
    def __init__(self, loaded: LoadedSettings, config_path: Path | None,
                 log_level: str | None = None, log_format: str | None = None) -> None:
        self.settings: Settings = loaded.settings
        self.source = loaded.source
        self.config_path = config_path
        self.log_level = log_level
        self.log_format = log_format
        self.stopping = asyncio.Event()
        self.pool: WorkerPool | None = None
        self.store: BaseHashStore | None = None
        self.live: LiveIndex | None = None
        self.cache: VerdictCache | None = None
        self.handler: MessageHandler | None = None  # one for every front end
        self.front_ends: list[FrontEnd] = []
        self.relay: RelayPool | None = None
        self.reports: ReportSender | None = None
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self._reloading = False

    # --- building ----------------------------------------------------------------------

    def _scanner(self) -> Scanner:
        assert self.pool is not None and self.live is not None
        return Scanner(self.settings, self.pool, self.live.current, cache=self.cache)

    async def _open_index(self, settings: Settings) -> tuple[BaseHashStore, LiveIndex]:
        store = await asyncio.to_thread(open_store, settings.store)
        live = LiveIndex(store, settings.store.reload_interval)
        await live.start(wait=FIRST_LOAD_WAIT)
        return store, live

    async def start(self) -> None:
        s = self.settings
        problems = service_problems(s, self.source)
        if problems:
            raise ConfigError(*problems)
        # The workers never need the quarantine, the store or the configuration (secrets).
        protect = [s.quarantine.path, s.store.path]
        if self.config_path is not None:
            protect.append(self.config_path)
        try:
            self.pool = WorkerPool.from_settings(s.workers, protect)
        except SandboxUnavailable as exc:
            raise ConfigError(str(exc)) from exc
        self.store, self.live = await self._open_index(s)
        if not self.live.loaded:
            log.error("hash lists not loaded yet: messages are answered per on_error until "
                      "they are", extra={"fields": {"error": self.live.last_error}})
        self.cache = open_cache(s.store, settings_namespace(s))
        quarantine = QuarantineStore(s.quarantine)
        try:
            await asyncio.to_thread(quarantine.check_writable)
        except OSError as exc:
            log.error("quarantine directory not writable: quarantined messages will be "
                      "answered 451", extra={"fields": {"path": str(quarantine.root),
                                                        "error": str(exc)}})
        self.relay = RelayPool(s.smtp, local_hostname(s.smtp.hostname))
        await warn_if_unreachable(s)
        # Reports of quarantined messages go out from the durable outbox in the
        # background; the handler wakes the sender after each quarantine write.
        self.reports = ReportSender(s, self.relay, self.metrics)
        self.handler = MessageHandler(s, self._scanner(), quarantine, self.metrics,
                                      on_quarantined=self.reports.wake)
        if s.smtp.listen:
            self.front_ends.append(SmtpProxy(s, self.handler, self.relay))
        if s.milter.listen:
            self.front_ends.append(MilterServer(s, self.handler))
        await self.reports.start()
        self._attach_metrics()
        for front_end in self.front_ends:
            await front_end.start()
        if s.metrics.listen:
            self.metrics_server = MetricsServer(self.metrics, s.metrics.listen,
                                                before_scrape=self._before_scrape)
            await self.metrics_server.start()

    def _attach_metrics(self) -> None:
        def pool_stats() -> PoolStats:
            assert self.pool is not None
            return self.pool.stats()

        def entries() -> int:
            assert self.live is not None
            return len(self.live.current()) if self.live.loaded else 0

        def relay() -> RelayPool:
            assert self.relay is not None
            return self.relay

        def connections(name: str) -> int:
            return sum(f.connections() for f in self.front_ends if f.name == name)

        relays = any(f.relays for f in self.front_ends)
        names = {f.name for f in self.front_ends}
        self.metrics.attach(HealthSource(
            pool_stats=pool_stats,
            index_loaded=lambda: self.live is not None and self.live.loaded,
            index_entries=entries,
            index_version=lambda: self.live.version if self.live is not None else 0,
            index_stale=lambda: self.live is not None and self.live.stale,
            next_hop_last_ok=lambda: relay().stats.last_ok,
            next_hop_probe=lambda: relay().probe(),
            # Milter only: it carries report mail and releases, a warning (next_hop_check)
            next_hop_carries_mail=relays,
            next_hop=lambda: relay().settings.next_hop,
            connections=lambda: connections("smtp"),
            idle_next_hop=lambda: relay().idle,
            milter_connections=(lambda: connections("milter")) if "milter" in names
            else None,
        ))

    def _before_scrape(self) -> None:
        if self.relay is not None:
            self.metrics.next_hop_totals(self.relay.stats.opened, self.relay.stats.reused)

    # --- signals ------------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP (see the module's docstring)."""
        if self._reloading:
            return
        self._reloading = True
        try:
            try:
                loaded = await asyncio.to_thread(load_settings, self.config_path)
            except ConfigError as exc:
                log.error("reload refused, keeping the running settings",
                          extra={"fields": {"error": str(exc)}})
                return
            new, old = loaded.settings, self.settings
            for section, key in RESTART_KEYS:
                if getattr(getattr(new, section), key) != getattr(getattr(old, section), key):
                    log.warning("setting changed but needs a restart",
                                extra={"fields": {"key": f"[{section}] {key}"}})
            setup_logging(self.log_level or new.logging.level,
                          self.log_format or new.logging.format)  # type: ignore[arg-type]
            if new.store != old.store:
                store, live = await self._open_index(new)
                old_store, old_live = self.store, self.live
                self.store, self.live = store, live
                if old_live is not None:
                    await old_live.stop()
                if old_store is not None:
                    old_store.close()
            elif self.live is not None:
                # Restarting it checks the store's version at once. Wait for that only when
                # there is a new version to load: an unchanged one is not loaded again, so
                # the wait would last all of FIRST_LOAD_WAIT before the settings apply.
                try:
                    assert self.store is not None
                    changed = await asyncio.to_thread(self.store.version) != self.live.version
                except Exception:
                    changed = True  # let the watcher find out (and log) what is wrong
                await self.live.stop()
                await self.live.start(wait=FIRST_LOAD_WAIT if changed else 0)
            if new.store != old.store or new.images != old.images or new.match != old.match:
                if self.cache is not None:
                    self.cache.close()
                self.cache = open_cache(new.store, settings_namespace(new))
            self.settings = new
            if self.relay is not None:
                # The next hop of relayed mail and of report mail alike: applied here, not
                # by a front end, so a milter-only instance follows a changed next_hop too.
                self.relay.configure(new.smtp)
                if new.smtp.next_hop != old.smtp.next_hop:
                    await warn_if_unreachable(new)
            if self.handler is not None:
                self.handler.reconfigure(new, self._scanner())
            for front_end in self.front_ends:
                front_end.reconfigure(new)
            if self.reports is not None:
                self.reports.reconfigure(new)
            for line in loaded.deprecated:
                log.warning(line)
            log.info("settings reloaded", extra={"fields": {"source": loaded.source}})
        finally:
            self._reloading = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        reloads: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await self.start()
            log.info("mailfilter serving", extra={"fields": {"settings": self.source}})
            await self.stopping.wait()
            log.info("shutting down: draining messages in flight")
        finally:
            await self.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("stopped")
        return 0

    async def close(self) -> None:
        timeout = self.settings.smtp.shutdown_timeout
        await asyncio.gather(*(f.drain(timeout) for f in self.front_ends))
        if self.reports is not None:
            await self.reports.stop()  # (what it has not sent stays in the outbox)
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.relay is not None:
            await self.relay.close()
        if self.live is not None:
            await self.live.stop()
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.close()
        if self.cache is not None:
            self.cache.close()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)


def serve(loaded: LoadedSettings, config_path: Path | None,
          log_level: str | None = None, log_format: str | None = None) -> int:
    """Run until SIGTERM; the exit status."""

    async def main() -> int:
        return await App(loaded, config_path, log_level, log_format).run()

    return asyncio.run(main())
