"""memcached entries through a client with bounded timeouts and an expiry.

dogpile's ``dogpile.cache.pymemcache`` backend builds its client without socket
timeouts: a memcached that accepts connections but does not answer would hang
every cached read. A region on that backend reads and writes its entries
through a client of the library's own instead (same servers, same TLS
context), with short timeouts, and every item expires in memcached once the
region's expiration time has passed (the extension checks an entry's age
itself; the expiry only frees memory). Items over memcached's size limit are
refused by the server: an error on the store, never on the query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE

#: seconds a memcached call may take before it fails (and the database answers)
TIMEOUT = 0.5
#: seconds a server that failed is left alone before it is tried again
DEAD_TIMEOUT = 5.0
#: memcached reads an expiry above 30 days as a Unix time
MAX_EXPIRE = 30 * 86400


def wrap(backend: Any, ttl: float) -> Any:
    """``backend`` itself, or a bounded client for a pymemcache backend."""
    if type(backend).__name__ != "PyMemcacheBackend":
        return backend
    try:
        return BoundedMemcached(backend, ttl)
    except Exception:  # an unusual configuration: keep the backend's own calls
        return backend


class BoundedMemcached:
    """The backend calls ``RegionStore`` makes, on a pymemcache ``HashClient`` of our own."""

    def __init__(self, backend: Any, ttl: float):
        from pymemcache.client.hash import HashClient

        self._backend = backend
        self.expire = max(1, min(int(ttl) + 1, MAX_EXPIRE))
        self.client = HashClient(
            list(backend.url),
            connect_timeout=TIMEOUT,
            timeout=TIMEOUT,
            use_pooling=True,  # thread-safe: a pool of connections per server
            tls_context=getattr(backend, "tls_context", None),
            retry_attempts=1,
            retry_timeout=1,
            dead_timeout=DEAD_TIMEOUT,
            ignore_exc=False,
            default_noreply=False,
        )

    def get_serialized(self, key: str) -> Any:
        value = self.client.get(key)
        return NO_VALUE if value is None else value

    def get_serialized_multi(self, keys: Sequence[str]) -> list[Any]:
        found = self.client.get_many(list(keys))
        return [found.get(k, NO_VALUE) for k in keys]

    def set_serialized(self, key: str, value: bytes) -> None:
        self.client.set(key, value, expire=self.expire, noreply=False)

    def delete(self, key: str) -> None:
        self.client.delete(key, noreply=False)

    def get_mutex(self, key: str) -> Any:
        return self._backend.get_mutex(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)
