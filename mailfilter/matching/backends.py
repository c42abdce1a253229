"""Which hash store the settings name: the registry of backends and `open_store`.

Apart from `store.py` (the interface and the shared logic every backend builds on) so
that the base module imports no backend and each backend imports only the base.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from mailfilter.errors import ConfigError
from mailfilter.matching.store import BaseHashStore

if TYPE_CHECKING:
    from mailfilter.settings import StoreSettings

__all__ = ["BACKENDS", "backend_name", "open_store"]

StoreFactory = Callable[["StoreSettings"], BaseHashStore]


# A backend's module (and its client library) is imported when that backend is opened.
def _redis_factory(settings: StoreSettings) -> BaseHashStore:
    from mailfilter.matching.store_redis import RedisHashStore

    return RedisHashStore(settings)


def _local_factory(settings: StoreSettings) -> BaseHashStore:
    from mailfilter.matching.store_local import LocalHashStore

    return LocalHashStore(settings)


BACKENDS: Final[dict[str, StoreFactory]] = {"redis": _redis_factory, "local": _local_factory}


def backend_name(settings: StoreSettings) -> str:
    url = settings.redis_url
    if not url:
        return "local"
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    raise ConfigError(
        f"[store] redis_url = {url!r}: expected a redis://, rediss:// or unix:// URL, "
        "or empty for the local store"
    )


def open_store(settings: StoreSettings) -> BaseHashStore:
    """The store the settings name: Redis when `redis_url` is set, else the local store."""
    return BACKENDS[backend_name(settings)](settings)
