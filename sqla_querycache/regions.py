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

Writes to Redis do not wait for their reply (:class:`_Sender`): a miss sends
its ``SET`` and returns its rows; the reply is read by a later write, when it
has long arrived. The entry is on the server as soon as the command is, so a
reader that asks after the miss returned finds it. A failed write costs a
later miss, never a wrong result (the entry is checked against the versions
on every read), so the promise does not depend on the reply.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

from dogpile.cache import CacheRegion, make_region
from dogpile.cache.api import NO_VALUE

from . import codec, memcached, wire
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
                 "region", "sender")  # fmt: skip

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
        #: writes sent without awaiting their reply (Redis with one connection pool)
        self.sender: _Sender | None = None
        users = getattr(self.backend, "writer_client", None)
        if users is not None:
            from .versions import private_client

            try:
                self.redis = private_client(users)
            except Exception:  # an unusual client: keep the backend's calls
                self.redis = None
            if self.redis is not None:
                self.sender = _Sender(self.redis.connection_pool)
        self.kind = type(self.backend).__name__
        # memcached: bounded timeouts and an expiry on every item (memcached.py)
        self.backend = memcached.wrap(self.backend, self.expiration_time or DEFAULT_TTL)
        #: whether entries and versions can be read in one round trip (decided lazily)
        self.combined: bool | None = None
        #: when (monotonic) a read or write of this region last began failing, or None
        self.down_since: float | None = None

    def caught_up(self, keys: list[str]) -> None:
        """Before a read of ``keys``: the writes of them this process sent are
        on the server.

        They usually are (the reply arrived while the caller did other work),
        but over separate connections nothing orders a write with a later
        read (a proxy, a network path may deliver the read first): a process
        must find what it just stored. Only a read of a key still owed waits.
        Never raises (a failed write is a miss later, counted where it was
        sent)."""
        sender = self.sender
        if sender is not None and sender.owed and sender.owes(keys):
            try:
                sender.settle()
            except Exception:
                pass

    def get(self, key: str) -> bytes | None:
        if self.redis is not None:
            self.caught_up([key])
            return self.redis.get(key)  # type: ignore[no-any-return]
        value = self.backend.get_serialized(key)
        if value is NO_VALUE or value is None:
            return None
        raw: bytes = value
        return raw

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Several entries in one round trip (``MGET`` on Redis)."""
        if self.redis is not None:
            self.caught_up(keys)
            return list(self.redis.mget(keys))
        values = self.backend.get_serialized_multi(keys)
        return [None if v is NO_VALUE or v is None else v for v in values]

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store an entry. On Redis the reply is not awaited: an error raised
        here may be an earlier write's (each is one lost entry, nothing more)."""
        if self.redis is not None:
            ttl = ttl or self.expiration_time or DEFAULT_TTL
            px = int(ttl * 1000) + 1000
            if self.sender is not None:
                self.sender.send(key, "SET", key, value, "PX", px)
            else:
                self.redis.set(key, value, px=px)
        else:
            self.backend.set_serialized(key, value)

    def settle(self) -> None:
        """Read every reply still owed for this region's writes (raises the first error)."""
        if self.sender is not None:
            self.sender.settle()

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


class _Sender:
    """Commands sent on a connection of their own whose replies are read later.

    ``send`` writes the command and returns; once ``MAX_OWED`` replies are
    owed, the next send first reads them all (they have long arrived; a
    server that stopped answering makes that read time out, and the send
    raises as a synchronous write would have, once per ``MAX_OWED`` writes
    instead of on every one). A read of a key still owed reads them first
    (``RegionStore.caught_up``). One connection per process and region, under
    a lock: sending is short, and Redis runs the commands one after the other
    anyway.
    """

    MAX_OWED = 16

    __slots__ = ("_conn", "_keys", "_lock", "_pid", "_pool")

    def __init__(self, pool: Any):
        self._pool = pool
        self._lock = threading.Lock()
        self._conn: Any = None
        #: the key of each command whose reply is owed, oldest first
        self._keys: collections.deque[str] = collections.deque()
        self._pid = os.getpid()

    def owes(self, keys: list[str]) -> bool:
        """Is a write of one of ``keys`` possibly still on its way? (No lock:
        a deque another thread changes meanwhile answers "perhaps".)"""
        owed = self._keys
        if len(owed) * len(keys) >= 256:
            return True
        try:
            return any(k in owed for k in keys)
        except RuntimeError:  # mutated during the scan
            return True

    def send(self, key: str, *args: Any) -> None:
        """Send one command (writing ``key``). Raises if it could not be sent,
        or (after sending it) with an error reply an earlier command got."""
        if self._pid != os.getpid():  # a forked child: the parent's lock may be held
            self._lock, self._conn, self._pid = threading.Lock(), None, os.getpid()
            self._keys = collections.deque()
        with self._lock:
            earlier: BaseException | None = None
            if self._conn is not None:
                try:
                    # replies are read in batches: by the time MAX_OWED are owed,
                    # all of them have long arrived (no poll of the socket per write)
                    if len(self._keys) >= self.MAX_OWED:
                        earlier = self._read(self._conn)
                except Exception as err:
                    self._drop()
                    if _timed_out(err):  # a server that stopped answering: no more sends
                        raise
                    # gone (a reset, a restart) or out of step: a new connection.
                    # What it owed is unknown: at worst those entries are not
                    # there, and their next reads miss; the new one stands alone
            for fresh in (self._conn is None, True):
                try:
                    wire.reader_of(self._connection()).send(wire.pack(*args))
                    break
                except Exception:
                    self._drop()
                    if fresh:  # a new connection failed: the server is not there
                        raise
                    # a connection that served before may have been closed by the
                    # server or a proxy since (a reset is seen on the next send)
                except BaseException:
                    self._drop()
                    raise
            self._keys.append(key)
        if earlier is not None:
            raise earlier

    def settle(self) -> None:
        with self._lock:
            if self._conn is None or self._pid != os.getpid():
                return
            try:
                earlier = self._read(self._conn)
            except BaseException:
                self._drop()
                raise
        if earlier is not None:
            raise earlier

    def _read(self, conn: Any) -> Exception | None:
        """Read every owed reply; the first error reply is returned (the
        connection stays in step). Anything else raises: the caller drops the
        connection."""
        from redis.exceptions import ResponseError

        error = None
        reader = wire.reader_of(conn)
        while self._keys:
            try:
                reader.read()
            except ResponseError as err:
                error = error or err
            self._keys.popleft()
        return error

    @property
    def owed(self) -> int:
        """Replies not read yet (commands that may still be on their way)."""
        return len(self._keys)

    def _connection(self) -> Any:
        if self._conn is None:
            from .versions import own_connection

            self._conn = own_connection(self._pool)
            self._keys.clear()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._keys.clear()
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass

    def close(self) -> None:
        """Await what is owed (each reply at most the socket timeout), then disconnect."""
        try:
            self.settle()
        except Exception:
            pass
        with self._lock:
            self._drop()


def _timed_out(err: BaseException) -> bool:
    from redis.exceptions import TimeoutError as RedisTimeout

    return isinstance(err, (RedisTimeout, TimeoutError))


def now() -> float:
    return time.time()
