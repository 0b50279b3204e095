"""Entry storage on a dogpile region's backend, as raw bytes.

Entries are read and written with the backend's ``get_serialized`` /
``set_serialized`` so the region's deserializer (pickle, for dogpile's
network backends) never sees them (I6). Expiration is checked by the
extension itself from the entry's creation time; on Redis backends the key
also gets a TTL so expired entries leave the server: the region's
expiration time, or ``DEFAULT_TTL`` for a region without one (a full Redis
under ``noeviction`` would otherwise refuse the version writes). Entries in
Redis are read and written through a client of the library's own, with
bounded socket timeouts whatever the region's client says.
"""

from __future__ import annotations

import time
from typing import Any

from dogpile.cache import CacheRegion, make_region
from dogpile.cache.api import NO_VALUE

from . import codec, memcached
from .exc import ConfigurationError

#: seconds an entry of a region without ``expiration_time`` lives in Redis
DEFAULT_TTL = 86400.0


def _safe_region(config: dict[str, Any]) -> CacheRegion:
    """Build a region from dogpile ``configure()`` arguments, with a safe serializer."""
    if "backend" not in config:
        raise ConfigurationError(f"region config needs a 'backend' key: {config!r}")
    region = make_region(serializer=codec.packb, deserializer=codec.unpackb)
    try:
        return region.configure(**config)
    except Exception as err:
        raise ConfigurationError(f"cannot configure region {config!r}: {err}") from err


class RegionStore:
    """One named region: where entries of that name live."""

    __slots__ = ("backend", "combined", "down_since", "expiration_time", "kind", "name", "redis",
                 "region")  # fmt: skip

    def __init__(self, name: str, region: Any):
        if isinstance(region, dict):
            region = _safe_region(region)
        if not isinstance(region, CacheRegion):
            raise ConfigurationError(
                f"region {name!r} must be a dogpile CacheRegion or a configure() dict, "
                f"got {type(region).__name__}"
            )
        if "backend" not in region.__dict__:  # dogpile sets it in configure()
            raise ConfigurationError(f"region {name!r} is not configured (call .configure())")
        self.name = name
        self.region = region
        self.backend = region.backend
        exp = region.expiration_time
        self.expiration_time: float | None = exp if exp and exp > 0 else None
        #: a client of our own for the backend's Redis server, when it has one
        #: (bounded timeouts: a hung server never stalls a read for long)
        self.redis = None
        users = getattr(self.backend, "writer_client", None)
        if users is not None:
            from .versions import private_client

            try:
                self.redis = private_client(users)
            except Exception:  # an unusual client: keep the backend's calls
                self.redis = None
        self.kind = type(self.backend).__name__
        # memcached: bounded timeouts and an expiry on every item (memcached.py)
        self.backend = memcached.wrap(self.backend, self.expiration_time or DEFAULT_TTL)
        #: whether entries and versions can be read in one round trip (decided lazily)
        self.combined: bool | None = None
        #: when (monotonic) a read or write of this region last began failing, or None
        self.down_since: float | None = None

    def get(self, key: str) -> bytes | None:
        if self.redis is not None:
            return self.redis.get(key)  # type: ignore[no-any-return]
        value = self.backend.get_serialized(key)
        if value is NO_VALUE or value is None:
            return None
        raw: bytes = value
        return raw

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Several entries in one round trip (``MGET`` on Redis)."""
        if self.redis is not None:
            return list(self.redis.mget(keys))
        values = self.backend.get_serialized_multi(keys)
        return [None if v is NO_VALUE or v is None else v for v in values]

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        if self.redis is not None:
            ttl = ttl or self.expiration_time or DEFAULT_TTL
            self.redis.set(key, value, px=int(ttl * 1000) + 1000)
        else:
            self.backend.set_serialized(key, value)

    def delete(self, key: str) -> None:
        if self.redis is not None:
            self.redis.delete(key)
        else:
            self.backend.delete(key)

    def mutex(self, key: str) -> Any:
        return self.backend.get_mutex(key)

    def __repr__(self) -> str:
        ttl = "none" if self.expiration_time is None else f"{self.expiration_time:g}s"
        return f"<region {self.name!r} {self.kind} expiration={ttl}>"


def now() -> float:
    return time.time()
