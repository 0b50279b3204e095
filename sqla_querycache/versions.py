"""Version stores: one counter per table, read with every lookup.

A cache entry records the versions of the tables it read, taken *before*
the query ran (I2); it is a hit only while they equal the current ones. A
write bumps its tables twice: once before the database commit
(``begin_write``, which also marks the tables "in flight" so nobody stores
or serves them meanwhile) and once after it (``end_write``). A missing
version is created with a fresh random value, so a flushed or evicted store
can never make an old entry match again (I4).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from . import wire

log = logging.getLogger("sqla_querycache")


#: fresh versions are random in [10**18, 2**62): always 19 digits (a read command's
#: arguments have a fixed size), never a leading zero (Redis INCRs them)
_FRESH_LOW = 10**18
_FRESH_SPAN = (1 << 62) - _FRESH_LOW


def fresh_versions(n: int) -> list[int]:
    """``n`` starting values no earlier incarnation of the store could have used
    (61.7 random bits each, from one read of the OS's random source)."""
    raw = os.urandom(8 * n)
    return [_FRESH_LOW + int.from_bytes(raw[i : i + 8], "big") % _FRESH_SPAN
            for i in range(0, 8 * n, 8)]  # fmt: skip


def fresh_version() -> int:
    """A starting value no earlier incarnation of the store could have used."""
    return fresh_versions(1)[0]


class VersionStore(Protocol):
    """What :class:`~sqla_querycache.QueryCache` needs of a version store."""

    #: short name shown in repr() and the CLI
    kind: str
    #: True when ``read`` needs the bind of the query (versions in that database)
    needs_bind: bool

    def read(self, names: Sequence[str], bind: Any = None) -> list[int] | None:
        """Current versions of ``names``; ``None`` if any is being written."""

    def begin_write(self, names: Sequence[str], conn: Any = None) -> None:
        """Before a commit: bump and mark ``names`` in flight.

        ``conn``: the Connection whose transaction is about to commit; the
        Engine of a statement that commits by itself (autocommit, ``COMMIT
        PREPARED``: no transaction to ride on); or None (unknown).
        """

    def end_write(self, names: Sequence[str]) -> None:
        """After the commit (or its failure): bump again and clear the mark. May raise."""

    def bump(self, names: Sequence[str]) -> None:
        """Invalidate ``names`` now (manual invalidation, migrations). May raise."""

    def close(self) -> None:
        """Release threads and connections the store holds."""


class LocalVersions:
    """In-process, thread-safe versions: one process, no network."""

    kind = "local"
    needs_bind = False

    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()

    def read(self, names: Sequence[str], bind: Any = None) -> list[int] | None:
        versions = self._versions
        in_flight = self._in_flight
        out = []
        for name in names:
            if in_flight and in_flight.get(name):
                return None
            v = versions.get(name)
            if v is None:
                with self._lock:
                    v = versions.setdefault(name, fresh_version())
            out.append(v)
        return out

    def _bump_locked(self, names: Sequence[str]) -> None:
        versions = self._versions
        for name in names:
            v = versions.get(name)
            versions[name] = (fresh_version() if v is None else v) + 1

    def begin_write(self, names: Sequence[str], conn: Any = None) -> None:
        with self._lock:
            self._bump_locked(names)
            self._in_flight.update(names)

    def end_write(self, names: Sequence[str]) -> None:
        with self._lock:
            self._bump_locked(names)
            self._in_flight.subtract(names)
            for name in names:
                if self._in_flight[name] <= 0:
                    del self._in_flight[name]

    def bump(self, names: Sequence[str]) -> None:
        with self._lock:
            self._bump_locked(names)

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        in_flight = sum(self._in_flight.values())
        return f"<LocalVersions tables={len(self._versions)} in_flight={in_flight}>"


class Unavailable(Exception):
    """The version store did not answer (or is cooling down after it did not).

    The only exception ``begin_write`` and ``bump`` of the Redis store raise
    (``end_write``, ``begin_async`` and ``wait`` never raise): a caller on the
    commit path treats it as "store down" and never lets it reach the user.
    """


#: seconds every Redis call of the library may block (connect, read, write)
TIMEOUT = 0.5
#: the longest lease accepted: a commit in an outage may wait that long
MAX_LEASE = 3600.0
#: a failure faster than this (s) was a connection closed meanwhile, not the server away
FAST_FAILURE = 0.05
#: the retry timer of undelivered post-commit halves: first delay, cap
RETRY_FIRST, RETRY_CAP = 0.02, 0.5


class _Circuit:
    """Fail fast after a failure: skip the store for ``cooldown`` s, then let one call probe.

    ``check()`` refusing a call is not a failure (it never re-opens the
    circuit); the first success closes it. ``outage_began`` is when this
    process first saw a failure since its last success (the commit path's
    lease wait counts from there).
    """

    __slots__ = ("cooldown", "down_until", "outage_began")

    def __init__(self, cooldown: float):
        self.cooldown = cooldown
        self.down_until = 0.0
        self.outage_began: float | None = None

    def cooling_down(self) -> bool:
        """True while :meth:`check` refuses calls."""
        return bool(self.down_until) and time.monotonic() < self.down_until

    def check(self) -> None:
        if self.cooling_down():
            raise Unavailable("version store cooling down after a failure")

    def failed(self) -> None:
        now = time.monotonic()
        self.down_until = now + self.cooldown
        if self.outage_began is None:
            self.outage_began = now

    def ok(self) -> None:
        self.down_until = 0.0
        self.outage_began = None


# Marks: a sorted set per table, {qc}:m:<table>, one member per marking
# transaction (a random token) scored with its own expiry (server time, ms).
# Nobody re-arms another writer's mark; a writer that does not know whether
# its mark landed sends a cancel, which removes it and leaves a tombstone
# ({qc}:dead:<token>) so a mark that arrives after its cancel is not added.

# KEYS: epoch, v_1..v_n, m_1..m_n   ARGV: lease_ms, new_epoch, new_v_1..new_v_n
_READ_LUA = """
local n = (#KEYS - 1) / 2
local out = {}
local e = redis.call('GET', KEYS[1])
if not e then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  e = ARGV[2]
end
out[1] = e
local now
for i = 1, n do
  if redis.call('EXISTS', KEYS[1 + n + i]) == 1 then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    if redis.call('ZCOUNT', KEYS[1 + n + i], '(' .. now, '+inf') > 0 then return false end
  end
  local v = redis.call('GET', KEYS[1 + i])
  if not v then
    redis.call('SET', KEYS[1 + i], ARGV[2 + i])
    v = ARGV[2 + i]
  end
  out[i + 1] = v
end
return out
"""
# Both halves of writes in one script, so a commit's begin carries the
# previous commits' ends (and cancels) in the same round trip.
# KEYS: begin v_1..v_b, begin m_1..m_b, dead(begin token),
#       end v_1..v_e, end m_1..m_e, cancel m_1..m_c, cancel dead_1..dead_c
# ARGV: mark ttl ms, b, e, c, begin token, end tokens (e), cancel tokens (c)
_WRITE_LUA = """
local ttl = tonumber(ARGV[1])
local b = tonumber(ARGV[2])
local e = tonumber(ARGV[3])
local c = tonumber(ARGV[4])
local k = 2 * b + 1
for i = 1, e do
  redis.call('INCR', KEYS[k + i])
  if ARGV[5 + i] ~= '' then redis.call('ZREM', KEYS[k + e + i], ARGV[5 + i]) end
end
k = k + 2 * e
for i = 1, c do
  redis.call('ZREM', KEYS[k + i], ARGV[5 + e + i])
  redis.call('SET', KEYS[k + c + i], '1', 'PX', ttl)
end
if b > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local dead = redis.call('EXISTS', KEYS[2 * b + 1]) == 1
  for i = 1, b do
    redis.call('INCR', KEYS[i])
    if not dead then
      redis.call('ZREMRANGEBYSCORE', KEYS[b + i], '-inf', now)
      redis.call('ZADD', KEYS[b + i], now + ttl, ARGV[5])
      redis.call('PEXPIRE', KEYS[b + i], ttl)
    end
  end
end
return b + e + c
"""
# Just before a commit whose marks were sent ahead: each mark must still be
# there. A server restarted since (empty, or from an older snapshot), or a
# failover, lost it while the writer trusted it: re-mark (bump + mark), so
# that rows read before the commit and stored meanwhile are never served
# after it. Sent before the database commit, awaited before commit() returns.
# KEYS: v_1..v_n, m_1..m_n, dead(token)   ARGV: mark ttl ms, token
_VERIFY_LUA = """
local n = (#KEYS - 1) / 2
local ttl = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = 0
for i = 1, n do
  if not redis.call('ZSCORE', KEYS[n + i], ARGV[2]) then
    lost = lost + 1
    redis.call('INCR', KEYS[i])
    redis.call('ZADD', KEYS[n + i], now + ttl, ARGV[2])
    redis.call('PEXPIRE', KEYS[n + i], ttl)
  end
end
return lost
"""
_BUMP_LUA = """
for i = 1, #KEYS do redis.call('INCR', KEYS[i]) end
return #KEYS
"""
# Run first on every new connection and by the heartbeat. A server that is
# not the one that recorded the boot key (restarted, from a snapshot or not;
# a promoted replica) gets a fresh epoch, so nothing stored before is served.
# KEYS: epoch, boot   ARGV: lease_ms, fresh epoch, renew (1: heartbeat)
_BOOT_LUA = """
local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
if redis.call('GET', KEYS[2]) ~= rid then
  redis.call('SET', KEYS[2], rid)
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return 1
end
if ARGV[3] == '1' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 0
"""


NoScriptError: Any = Exception  # redis.exceptions.NoScriptError, bound on first use

_POOL_KW_SKIP = ("orig_", "maint_notifications", "himport")


def private_client(client: Any, timeout: float = TIMEOUT, on_connect: Any = None) -> Any:
    """A client of its own for the server ``client`` talks to, with bounded timeouts.

    The library never blocks on a socket longer than ``timeout`` whatever the
    user's client says (a dogpile region's client has no socket timeout by
    default). ``None`` for clients without a single connection pool (cluster).
    """
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return None
    import redis

    kw = {k: v for k, v in pool.connection_kwargs.items() if not k.startswith(_POOL_KW_SKIP)}
    mine = kw.get("socket_timeout")
    kw["socket_timeout"] = timeout if mine is None else min(mine, timeout)
    mine = kw.get("socket_connect_timeout")
    kw["socket_connect_timeout"] = timeout if mine is None else min(mine, timeout)
    kw["health_check_interval"] = 0
    kw.pop("retry", None)
    kw.pop("retry_on_timeout", None)
    kw.pop("retry_on_error", None)
    if on_connect is not None:
        kw["redis_connect_func"] = on_connect
    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kw["retry"] = Retry(NoBackoff(), 0)
    except ImportError:  # pragma: no cover
        pass
    new_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kw)
    return redis.Redis(connection_pool=new_pool)


def own_connection(pool: Any) -> Any:
    """A connection made like ``pool``'s, kept by its caller.

    Not the pool's ``make_connection()``: the pool counts those against its
    ``max_connections`` and never uncounts them (they are not given back), so
    after ~100 threads or broken connections nothing could be sent."""
    return pool.connection_class(**pool.connection_kwargs)


def _tables(*halves: Sequence[tuple[str, str]]) -> list[str]:
    """The tables of (table, token) pairs: ends, cancels."""
    return [n for pairs in halves for n, _ in pairs]


class _Ticket:
    """The reply of one write script sent ahead (see RedisVersions.begin_async)."""

    __slots__ = ("cancels", "conn", "done", "drop", "ends", "error", "lua", "names", "reply",
                 "token")

    def __init__(self, ends: list[tuple[str, str]], lua: str = "", names: Sequence[str] = (),
                 token: str = "", cancels: list[tuple[str, str]] | None = None):  # fmt: skip
        self.done = False
        self.error: BaseException | None = None
        self.ends = ends  # (name, token) post-commit halves it carries
        self.cancels = cancels or []  # (name, token) cancels it carries
        self.lua = lua
        self.reply: Any = None
        self.conn: Any = None  # the connection whose reply it is
        self.names = names  # tables it marks
        self.token = token  # their mark's token
        self.drop: Sequence[str] = ()  # tables it changes: the near cache forgets them


class RedisVersions:
    """Versions in Redis, shared by every process; one round trip per lookup.

    All keys of one namespace share a hash tag (``{qc}``), so they live in one
    Redis Cluster slot and each operation is one atomic script.

    Outages: an *epoch* key with a short TTL (``lease``) is part of every
    entry's versions and is kept alive by a heartbeat of each process. If
    Redis stops answering, nobody renews it; a writer that cannot mark its
    tables before its commit waits until ``lease`` seconds after this process
    first saw the store fail (:meth:`commit_wait_remaining`,
    :meth:`mark_for_commit`), so by the time Redis could serve anyone again
    after such a commit the epoch has expired and every older entry is
    unreachable. A restarted server (or a promoted replica) is recognised by
    its ``run_id`` on every new connection and by the heartbeat, and gets a
    fresh epoch. See ARCHITECTURE.md, "Version protocol".

    Failure contract: ``begin_write`` and ``bump`` raise only
    :class:`Unavailable`; ``end_write``, ``begin_async``, ``wait``,
    ``mark_for_commit`` and ``commit_wait_remaining`` never raise.
    """

    kind = "redis"
    needs_bind = False

    def __init__(
        self,
        client: Any,
        namespace: str = "qc",
        *,
        lease: float = 5.0,
        in_flight_ttl: float = 60.0,
        cooldown: float = 1.0,
        heartbeat: bool = True,
        timeout: float = TIMEOUT,
        require: bool = False,
    ):
        from . import checks
        from .exc import ConfigurationError

        lease = checks.seconds("lease", lease, maximum=MAX_LEASE)
        in_flight_ttl = checks.seconds("in_flight_ttl", in_flight_ttl, maximum=86400.0)
        cooldown = checks.seconds("cooldown", cooldown, maximum=MAX_LEASE)
        timeout = checks.seconds("timeout", timeout, maximum=60.0)
        checks.flag("heartbeat", heartbeat)
        checks.flag("require", require)
        if lease < 0.001 or in_flight_ttl < 0.001:  # Redis TTLs are whole milliseconds
            raise ConfigurationError("lease and in_flight_ttl must be at least 0.001 s")
        if isinstance(client, str):
            try:
                import redis
            except ImportError as err:  # pragma: no cover
                raise ConfigurationError("versions=<redis URL> needs the 'redis' extra") from err
            try:
                client = redis.Redis.from_url(
                    client, socket_timeout=timeout, socket_connect_timeout=timeout,
                    health_check_interval=0,
                )  # fmt: skip
            except (ValueError, TypeError) as err:
                raise ConfigurationError(f"versions: not a usable Redis URL: {err}") from None
        if not hasattr(client, "register_script"):
            raise ConfigurationError(f"not a redis client: {client!r}")
        global NoScriptError
        from redis.exceptions import NoScriptError

        self.namespace = namespace
        self._tag = "{" + namespace + "}"
        self._epoch_key = f"{self._tag}:epoch"
        self._boot_key = f"{self._tag}:boot"
        self.lease = float(lease)
        self.timeout = float(timeout)
        self.in_flight_ttl = float(in_flight_ttl)
        #: kept for older commit loops: how long one commit may retry its mark
        self.retry_window = self.lease
        self.user_client = client
        #: a Redis Cluster client (no single connection pool): no pipelined scripts
        self._cluster = not hasattr(client, "connection_pool")
        own = private_client(client, timeout, self._on_connect)
        self.client = own if own is not None else client
        self._read = self.client.register_script(_READ_LUA)
        self._write = self.client.register_script(_WRITE_LUA)
        self._bump = self.client.register_script(_BUMP_LUA)
        self._boot = self.client.register_script(_BOOT_LUA)
        self._verify = self.client.register_script(_VERIFY_LUA)
        self._noscript = False  # the server lost our scripts: send the next ones with EVAL
        self._read_cmds: dict[Sequence[str], tuple[bool, bytes]] = {}  # _read_command
        self._ends: list[tuple[str, str]] = []  # post-commit halves not delivered yet
        self._cancels: list[tuple[str, str]] = []  # marks of unknown fate to resolve
        self._tokens: dict[int, tuple[Any, str, float]] = {}  # id(names) -> names, token, t
        self._local = threading.local()  # each thread's connection for writes
        self._ends_lock = threading.Lock()
        self._flush_timer: threading.Timer | None = None
        self.end_delay = RETRY_FIRST
        self._retry_delay = RETRY_FIRST
        self._circuit = _Circuit(cooldown)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        #: the near cache (``near.NearCache``) answering reads in process, or None
        self.near: Any = None
        if require:  # before any thread starts: a failed check leaves nothing running
            try:
                self.check()
            except Unavailable as err:
                raise ConfigurationError(
                    f"the Redis version store {self._where()} does not answer ({err}): start "
                    f"it or fix the address, or pass require_versions=False to QueryCache "
                    f"(require=False to RedisVersions) to start without it; until it answers, "
                    f"reads go to the database and commits wait up to lease={self.lease:g}s "
                    f"after the first failure"
                ) from None
        if heartbeat:
            self._heartbeat = threading.Thread(
                target=self._beat, name="sqla_querycache-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def check(self) -> None:
        """Raise :class:`Unavailable` unless the server answers now (within ``timeout``)."""
        try:
            self.client.ping()
        except Exception as err:
            pool = getattr(self.client, "connection_pool", None)
            if pool is not None and self.client is not self.user_client:
                pool.disconnect()  # ours: keep no half-open connection
            raise Unavailable(f"{type(err).__name__}: {err}") from None

    def _where(self) -> str:
        kw = getattr(getattr(self.client, "connection_pool", None), "connection_kwargs", {})
        if not kw:
            return "(cluster)"
        if kw.get("path"):
            return f"unix://{kw['path']}?db={kw.get('db', 0)}"
        return f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"

    def _vkeys(self, names: Sequence[str]) -> list[str]:
        return [f"{self._tag}:v:{n}" for n in names]

    def _mkeys(self, names: Sequence[str]) -> list[str]:
        return [f"{self._tag}:m:{n}" for n in names]

    def _deadkey(self, token: str) -> str:
        return f"{self._tag}:dead:{token or '-'}"

    # -- connections

    def _on_connect(self, conn: Any) -> None:
        """Every new connection: the handshake, then the boot check (before any command)."""
        conn.on_connect()
        conn.send_command("EVAL", _BOOT_LUA, 2, self._epoch_key, self._boot_key,
                          int(self.lease * 1000), fresh_version(), 0)  # fmt: skip
        if conn.read_response() and self.near is not None:  # a new server, a new epoch
            self.near.clear()

    def _call(self, script: Any, keys: list[str], args: list[Any], client: Any = None) -> Any:
        if not getattr(self._local, "probing", False):  # the commit path asks anyway
            self._circuit.check()
        try:
            out = script(keys=keys, args=args, client=client)
        except Exception as err:
            self._circuit.failed()
            raise Unavailable(f"version store failed: {err!r}") from err
        self._ok()
        return out

    def _ok(self) -> None:
        """A call succeeded: close the circuit; deliver at once what is owed."""
        began = self._circuit.outage_began
        was_down = began is not None
        self._circuit.ok()
        if began is not None:
            log.info("the Redis version store %s answers again "
                     "(failing for %.1fs)", self._where(), time.monotonic() - began)  # fmt: skip
        self._retry_delay = RETRY_FIRST
        if was_down and (self._ends or self._cancels):
            self._arm_timer(0.0)

    # -- reads

    def _read_keys(self, names: Sequence[str]) -> list[str]:
        return [self._epoch_key, *self._vkeys(names), *self._mkeys(names)]

    def read_args(self, names: Sequence[str]) -> tuple[list[str], list[Any]]:
        return self._read_keys(names), [int(self.lease * 1000), *fresh_versions(1 + len(names))]

    def _read_command(self, names: Sequence[str]) -> bytes:
        """The read script's command for ``names``, packed: all but its fresh values
        are the same on every call, so that part is packed once per tuple of names."""
        noscript = self._noscript
        if type(names) is not tuple:
            names = tuple(names)
        memo = self._read_cmds.get(names)
        if memo is None or memo[0] != noscript:
            if len(self._read_cmds) > 4096:
                self._read_cmds.clear()
            keys = self._read_keys(names)
            head = ("EVAL", _READ_LUA) if noscript else ("EVALSHA", self._read.sha)
            count = len(head) + 1 + len(keys) + 2 + len(names)
            memo = self._read_cmds[names] = (noscript, wire.pack_prefix(
                count, *head, len(keys), *keys, int(self.lease * 1000)))  # fmt: skip
        return memo[1] + b"".join([b"$19\r\n%d\r\n" % v
                                   for v in fresh_versions(1 + len(names))])  # fmt: skip

    @staticmethod
    def parse(raw: Any) -> list[int] | None:
        if not raw:
            return None
        return [int(v) for v in raw]

    def read(self, names: Sequence[str], bind: Any = None) -> list[int] | None:
        versions: list[int] | None = self._lookup(None, names)[1]
        return versions

    def read_with_entry(self, entry_client: Any, key: str, names: Sequence[str]) -> tuple[Any, Any]:
        """The entry and the versions in one round trip (a pipeline on one server).

        ``entry_client`` talks to the same server (see :meth:`same_server`);
        the pipeline runs on this store's own client, with its timeouts.
        """
        return self._lookup(key, names)

    def read_with_entries(self, entry_client: Any, keys: list[str],
                          names: Sequence[str]) -> tuple[list[Any], Any]:  # fmt: skip
        """Several entries (``MGET``) and the versions in one round trip."""
        raws, versions = self._lookup(keys, names)
        return (list(raws) if raws is not None else [None] * len(keys)), versions

    def _lookup(self, key: str | list[str] | None, names: Sequence[str]) -> tuple[Any, Any]:
        """One pipeline: this process's undelivered post-commit halves, the entry, the versions.

        Delivering the halves first means a process reads its own commits'
        tables as settled at once, instead of bypassing them until the timer.
        """
        self._circuit.check()
        near = self.near
        if near is not None:
            if key is None:
                got = near.get(names)
                if got is not None:
                    return None, got
            gen = near.generation()
        if self._cluster:  # a cluster pipeline refuses scripts; these keys share one slot
            if self._ends or self._cancels:
                try:
                    self._send((), "")
                except Unavailable:
                    pass
            keys, args = self.read_args(names)
            return None, self.parse(self._call(self._read, keys, args))
        if key is None and not self._ends and not self._cancels:
            versions = self.parse(self._read_direct(names))  # this thread's connection
            if near is not None and versions is not None:
                near.put(names, versions, gen)
            return None, versions
        with self._ends_lock:
            ends, self._ends = self._ends, []
            cancels, self._cancels = self._cancels, []
        try:
            try:
                out = self._pipelined(key, names, ends, cancels)
            except NoScriptError:  # a restarted or flushed server: EVAL loads them again
                self._noscript = True
                out = self._pipelined(key, names, ends, cancels)
        except Exception as err:
            with self._ends_lock:
                self._ends[:0] = ends  # keep them for the next attempt
                self._cancels[:0] = cancels
            self._circuit.failed()
            raise Unavailable(f"version store read failed: {err!r}") from err
        self._ok()
        versions = self.parse(out[-1])
        if near is not None:
            if ends or cancels:  # this process's writes rode along
                near.drop(_tables(ends, cancels))
            elif versions is not None:
                near.put(names, versions, gen)
        return (out[-2] if key is not None else None), versions

    def _pipelined(self, key: str | list[str] | None, names: Sequence[str],
                   ends: list[tuple[str, str]], cancels: list[tuple[str, str]]) -> Any:  # fmt: skip
        # This thread's own connection, the commands packed at once and their
        # replies read raw: half the cost of a redis-py pipeline (no pipeline
        # object, no pool checkout, no response callbacks). Replies this
        # connection still owed (writes sent ahead) are read first, in order.
        # EVALSHA directly: a Script object would cost a SCRIPT EXISTS.
        noscript = self._noscript
        cmds: list[bytes] = []
        if ends or cancels:
            if self.near is not None:
                self.near.drop(_tables(ends, cancels))
            wargs = self._write_args((), "", ends, cancels)
            cmds.append(self._script_command(self._write.sha, _WRITE_LUA, wargs))
        if isinstance(key, list):
            cmds.append(wire.pack("MGET", *key))
        elif key is not None:
            cmds.append(wire.pack("GET", key))
        cmds.append(self._read_command(names))
        local = self._local
        conn = self._thread_connection()
        tickets = [_Ticket([]) for _ in cmds]  # their ends, if any, the caller keeps
        try:
            wire.reader_of(conn).send(b"".join(cmds))
        except Exception as err:
            self._fail_connection(err)
            raise
        for t in tickets:
            t.conn = conn
            local.pending.append(t)
        self._wait(tickets[-1])
        for t in tickets:
            if t.error is not None:
                raise t.error
            if not t.done:
                raise Unavailable("version store read failed: no reply")
        if noscript:
            self._noscript = False
        return [t.reply for t in tickets]

    def same_server(self, other: Any) -> bool:
        try:
            a = self.client.connection_pool.connection_kwargs
            b = other.connection_pool.connection_kwargs
        except AttributeError:
            return False
        fields = ("host", "port", "db", "path", "username")
        return all(a.get(f) == b.get(f) for f in fields)

    # -- writes

    def _write_args(self, begin: Sequence[str], token: str, ends: Sequence[tuple[str, str]],
                    cancels: Sequence[tuple[str, str]] = ()) -> list[Any]:  # fmt: skip
        """EVAL(SHA) arguments of ``_WRITE_LUA`` after the script: numkeys, KEYS, ARGV."""
        end_names = [n for n, _ in ends]
        cancel_names = [n for n, _ in cancels]
        keys = [*self._vkeys(begin), *self._mkeys(begin), self._deadkey(token),
                *self._vkeys(end_names), *self._mkeys(end_names),
                *self._mkeys(cancel_names), *(self._deadkey(t) for _, t in cancels)]  # fmt: skip
        return [len(keys), *keys, int(self.in_flight_ttl * 1000), len(begin), len(ends),
                len(cancels), token, *(t for _, t in ends), *(t for _, t in cancels)]  # fmt: skip

    def _send(self, begin: Sequence[str], token: str) -> None:
        """Send a write (and everything owed) and await it; raise Unavailable on failure."""
        if self._cluster:
            with self._ends_lock:
                ends, self._ends = self._ends, []
                cancels, self._cancels = self._cancels, []
            numkeys, *rest = self._write_args(begin, token, ends, cancels)
            try:
                self._call(self._write, rest[:numkeys], rest[numkeys:])
            except Unavailable:
                with self._ends_lock:
                    self._ends[:0] = ends
                    self._cancels[:0] = cancels
                raise
            return
        for _ in range(2):  # once more after NOSCRIPT (then with EVAL, which loads it)
            ticket = self._begin(begin, token)
            if self._wait_quiet(ticket):
                return
            if not isinstance(ticket.error, NoScriptError):
                break
        raise Unavailable(f"version store write failed: {ticket.error!r}")

    def _read_direct(self, names: Sequence[str]) -> Any:
        local = self._local
        if not getattr(local, "pending", None) and not getattr(local, "probing", False):
            # nothing owed on this thread's connection (the common case): send,
            # read, without the tickets that keep replies of writes sent ahead in order
            self._circuit.check()
            conn = self._thread_connection()
            reader = wire.reader_of(conn)
            try:
                reader.send(self._read_command(names))
                reply = reader.read()
            except NoScriptError:
                self._noscript = True  # the next scripts go with EVAL, which loads them
            except Exception as err:
                self._fail_connection(err)
                raise Unavailable(f"version store read failed: {err!r}") from None
            else:
                self._ok()
                return reply
        ticket = None
        for _ in range(2):  # once more after NOSCRIPT (then with EVAL)
            ticket = self._send_script("", "", [], [], packed=self._read_command(names))
            if self.wait(ticket):
                return ticket.reply
            if not isinstance(ticket.error, NoScriptError):
                break
        raise Unavailable(f"version store read failed: {ticket.error!r}")  # type: ignore[union-attr]

    def _send_script(self, sha: str, lua: str, args: list[Any], ends: list[tuple[str, str]],
                     names: Sequence[str] = (), token: str = "",
                     cancels: list[tuple[str, str]] | None = None,
                     packed: bytes | None = None,
                     changed: Sequence[str] = ()) -> _Ticket:  # fmt: skip
        """Send a script (or the ``packed`` command) on this thread's connection;
        its reply is read later (:meth:`wait`). ``changed``: the tables it
        changes, which the near cache forgets now and again once it ran."""
        ticket = _Ticket(ends, lua, names, token, cancels)
        if changed and self.near is not None:
            ticket.drop = changed
            self.near.drop(changed)
        local = self._local
        try:
            if not getattr(local, "probing", False):
                self._circuit.check()  # refused: not a failure, nothing was sent
        except Unavailable as err:
            self._resolve(ticket, err)
            return ticket
        try:
            conn = self._thread_connection()
            if packed is None:
                packed = self._script_command(sha, lua, args)
            wire.reader_of(conn).send(packed)
            ticket.conn = conn
            local.pending.append(ticket)
        except Exception as err:
            self._fail_connection(err)
            self._resolve(ticket, err)
        return ticket

    def _script_command(self, sha: str, lua: str, args: list[Any]) -> bytes:
        """A script call, packed: EVALSHA, or EVAL once the server lost our scripts."""
        if self._noscript:
            return wire.pack("EVAL", lua, *args)
        return wire.pack("EVALSHA", sha, *args)

    def _begin(self, names: Sequence[str], token: str) -> _Ticket:
        with self._ends_lock:
            ends, self._ends = self._ends, []
            cancels, self._cancels = self._cancels, []
        args = self._write_args(names, token, ends, cancels)
        changed = [*names, *_tables(ends, cancels)]
        return self._send_script(self._write.sha, _WRITE_LUA, args, ends, names, token, cancels,
                                 changed=changed)  # fmt: skip

    def begin_async(self, names: Sequence[str]) -> _Ticket:
        """Send ``begin_write(names)`` now, read its reply later with :meth:`wait`.

        A writer sends it when it first writes a table, so the round trip
        overlaps its own statements and only its reply is awaited before the
        commit. Replies on one thread's connection arrive in order. Never raises.
        """
        token = secrets.token_hex(8)
        self._remember(names, token)
        return self._begin(names, token)

    def verify_async(self, names: Sequence[str], token: str) -> _Ticket:
        """Send the pre-commit check of a mark sent ahead (``_VERIFY_LUA``); await
        it with :meth:`wait` (True: the mark held, or was made again). Never raises."""
        keys = [*self._vkeys(names), *self._mkeys(names), self._deadkey(token)]
        argv = [int(self.in_flight_ttl * 1000), token]
        if self._cluster:  # no pipelined connection of our own: ask now
            ticket = _Ticket([])
            ticket.done = True
            try:
                ticket.reply = self._call(self._verify, keys, argv)
            except Exception as err:
                ticket.error = err
            return ticket
        return self._send_script(self._verify.sha, _VERIFY_LUA, [len(keys), *keys, *argv], [],
                                 changed=names)  # fmt: skip

    def _remember(self, names: Sequence[str], token: str) -> None:
        """The mark token of ``names`` (this very tuple), for its ``end_write``."""
        now = time.monotonic()
        tokens = self._tokens
        if len(tokens) > 256:  # never ended (a caller that gave up): forget, they expire
            for k in [k for k, (_, _, t) in tokens.items() if now - t > self.in_flight_ttl]:
                tokens.pop(k, None)
        tokens[id(names)] = (names, token, now)

    def _token_of(self, names: Sequence[str]) -> str:
        found = self._tokens.pop(id(names), None)
        if found is not None and found[0] is names:
            return found[1]
        return ""  # unknown: the end bumps; the mark (if any) expires with its TTL

    def wait(self, ticket: _Ticket) -> bool:
        """Read replies until ``ticket``'s arrived; True if its script ran. Never raises.

        False also when asked from another thread than the one that sent it
        (its reply is on that thread's connection): the caller marks again.
        Whenever a mark's fate is unknown, a cancel for it is queued.
        """
        ok = self._wait_quiet(ticket)
        if not ok and ticket.names and ticket.token:
            self._tokens.pop(id(ticket.names), None)
            self._queue(cancels=[(n, ticket.token) for n in ticket.names])
        return ok

    def _wait_quiet(self, ticket: _Ticket) -> bool:
        try:
            return self._wait(ticket)
        except Exception as err:  # a bug guard: the commit path must not raise
            self._fail_connection(err)
            return False

    def _wait(self, ticket: _Ticket) -> bool:
        local = self._local
        if not ticket.done and ticket.conn is not getattr(local, "conn", None):
            return False
        while not ticket.done:
            try:
                reply = wire.reader_of(local.conn).read()
            except NoScriptError as err:
                self._noscript = True  # the next scripts go with EVAL, which loads them
                self._resolve(local.pending.popleft(), err)
                continue
            except Exception as err:
                self._fail_connection(err)
                break
            self._resolve(local.pending.popleft(), reply)
        if ticket.done and ticket.error is None:
            self._ok()
            return True
        return False

    def _resolve(self, ticket: _Ticket, outcome: Any) -> None:
        if ticket.drop:  # whatever it did is done now: reads from here on see it
            self.near.drop(ticket.drop)
        ticket.done = True
        ticket.reply = outcome
        if isinstance(outcome, BaseException):
            ticket.error = outcome
            if ticket.ends or ticket.cancels:  # deliver them later
                self._queue(ticket.ends, ticket.cancels)

    def _fail_connection(self, err: BaseException) -> None:
        """The thread's connection failed: every reply it owed is lost."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass
        local.conn = None
        pending = getattr(local, "pending", ())
        local.pending = collections.deque()
        for ticket in pending:
            self._resolve(ticket, err)
        self._circuit.failed()

    def begin_write(self, names: Sequence[str], conn: Any = None) -> None:
        """Bump and mark ``names`` now and await it. Raises only :class:`Unavailable`."""
        token = secrets.token_hex(8)
        try:
            self._remember(names, token)
            self._send(names, token)
        except Unavailable:
            self._tokens.pop(id(names), None)
            self._queue(cancels=[(n, token) for n in names])
            raise
        except Exception as err:  # a bug guard: the contract says Unavailable
            self._circuit.failed()
            self._tokens.pop(id(names), None)
            self._queue(cancels=[(n, token) for n in names])
            raise Unavailable(f"version store write failed: {err!r}") from err

    def commit_wait_remaining(self) -> float:
        """Seconds a commit that could not mark its tables must still wait (0: commit now).

        ``lease`` after this process first saw the store fail in the current
        outage: by then the epoch no process could renew has expired. 0 when
        the store is healthy. Never raises.
        """
        began = self._circuit.outage_began
        if began is None:
            return 0.0
        return max(0.0, began + self.lease - time.monotonic())

    def mark_for_commit(self, names: Sequence[str], conn: Any = None) -> bool:
        """The commit path's whole pre-commit step: True if ``names`` are marked.

        Tries :meth:`begin_write`; while the store fails, retries (backing off,
        at most 0.25 s apart) until :meth:`commit_wait_remaining` is 0, then
        returns False: the caller commits, queues a bump for the tables and
        bypasses them until it lands. Never raises.

        Every attempt asks the server itself (:meth:`_probe`): the circuit's
        cool-down is no evidence that the store is away. Once the outage's
        lease has run out, a commit in the cool-down does not ask before the
        database commit: :meth:`settle_unmarked` asks after it, which is what
        the promise needs (a commit that trusted the cool-down there while other
        processes reached the store again, under a fresh epoch, would let them
        serve the rows it changed).
        """
        delay = 0.01
        if self._circuit.cooling_down() and self.commit_wait_remaining() <= 0:
            # the lease of this outage has run out and the store is cooling down:
            # commit unmarked at once; settle_unmarked asks the server itself
            # after the database commit, which is what the promise needs (one
            # ask per commit, not two)
            return False
        # never past ``lease`` from this commit's first failure either: other
        # threads' successes (reads, the heartbeat) restart the outage clock,
        # and a store that answers them but keeps refusing this write must
        # not hold the commit for good
        cap = None
        while True:
            if self._probe(lambda: self.begin_write(names, conn)):
                return True
            now = time.monotonic()
            if cap is None:
                cap = now + self.lease
            remaining = min(self.commit_wait_remaining(), cap - now)
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.25)

    def _probe(self, attempt: Callable[[], Any]) -> bool:
        """Run ``attempt`` against the server now, cool-down or not: True if it
        succeeded. A fast failure (a connection closed meanwhile by the server
        or a proxy: a reset, a broken pipe; not a timeout) is tried once more,
        on a fresh connection."""
        local = self._local
        local.probing = True  # _send_script skips the circuit's check
        local.probe_timed_out = False
        try:
            for _ in range(2):
                began = time.monotonic()
                try:
                    attempt()
                    return True
                except Exception:
                    if time.monotonic() - began > FAST_FAILURE:
                        local.probe_timed_out = True  # the server is away or hung
                        return False
            return False
        finally:
            local.probing = False

    def settle_unmarked(self, names: Sequence[str]) -> bool:
        """After a commit made without a mark (``mark_for_commit`` returned False).

        Bumps ``names`` before the commit returns if the store answers (the
        store may have come back while the commit ran, and readers may have
        stored old rows under a fresh epoch meanwhile); otherwise the bump is
        owed and delivered by this store as soon as it answers (timer,
        heartbeat, next call). True if it landed now. Never raises. Like
        :meth:`mark_for_commit`, it asks the server itself, cool-down or not.
        """
        self.end_write(tuple(names))

        def deliver() -> None:
            self.flush()
            pending = getattr(self._local, "pending", None)
            if (pending and not self._wait_quiet(pending[-1])) or self.owed():
                raise Unavailable("version store write failed")

        try:
            if self._probe(deliver):
                return True
            if self._local.probe_timed_out:  # away or hung: the lease covers it
                return False
            # the bump did not land; a server that still answers (full under
            # ``noeviction``: it refuses writes, not reads or DEL) must not let
            # others serve what this commit changed: drop the epoch, so every
            # entry is unreachable and a new epoch (which needs a write) can only
            # be made, and rows read under it, after this commit
            if self.near is not None:
                self.near.clear()
            return self._probe(lambda: self.client.delete(self._epoch_key))
        except Exception:  # a bug guard: the contract says it never raises
            return False

    def end_write(self, names: Sequence[str]) -> None:
        """Send the post-commit half now without waiting for its reply. Never raises.

        ``names`` must be the very tuple given to :meth:`begin_write` or
        :meth:`begin_async`: it finds that mark's token. Until it lands the
        tables stay marked, so every reader bypasses them: a late or lost end
        costs cache hits, never correctness. If it cannot be sent, it is
        queued and rides on the next lookup or write, or a backing-off timer.
        """
        if self.near is not None:
            self.near.drop(names)
        try:
            token = self._token_of(names)
            ends = [(n, token) for n in names]
            if not self._cluster and self._send_end(ends):
                return
            self._queue(ends)
        except Exception:  # a bug guard: the contract says it never raises
            self._queue([(n, "") for n in names])

    def _thread_connection(self) -> Any:
        """This thread's own connection (a new one after a fork: never share a socket)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = local.conn = own_connection(self.client.connection_pool)
            local.pending = collections.deque()
            local.pid = os.getpid()
        return conn

    def _send_end(self, ends: list[tuple[str, str]]) -> bool:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid() or self._circuit.down_until:
            return False
        # on failure its ends go back to the queue
        ticket = self._send_script(self._write.sha, _WRITE_LUA, self._write_args((), "", ends),
                                   ends, changed=_tables(ends))  # fmt: skip
        if ticket.done:
            return True  # failed at once; _resolve queued them again
        if len(local.pending) > 64:  # replies owed pile up only if this thread never waits
            self.wait(local.pending[-1])
        return True

    def _queue(self, ends: Sequence[tuple[str, str]] = (),
               cancels: Sequence[tuple[str, str]] = ()) -> None:  # fmt: skip
        if self.near is not None:
            self.near.drop(_tables(ends, cancels))
        with self._ends_lock:
            self._ends.extend(ends)
            self._cancels.extend(cancels)
        self._arm_timer(self._retry_delay)

    def _arm_timer(self, delay: float) -> None:
        with self._ends_lock:
            if self._flush_timer is not None or self._stop.is_set():
                return
            self._flush_timer = threading.Timer(delay, self._flush)
            self._flush_timer.daemon = True
            self._flush_timer.start()

    def _flush(self) -> None:
        with self._ends_lock:
            self._flush_timer = None
            if not self._ends and not self._cancels:
                return
        try:
            self._send((), "")
        except Exception:
            # Redis away: back off (capped); a success anywhere re-arms at once
            self._retry_delay = min(max(self._retry_delay * 2, RETRY_FIRST), RETRY_CAP)
            self._arm_timer(self._retry_delay)

    def flush(self) -> None:
        """Deliver queued post-commit halves now (raises Unavailable if Redis is away)."""
        with self._ends_lock:
            pending = bool(self._ends or self._cancels)
        if pending:
            self._send((), "")

    def owed(self) -> int:
        """How many post-commit halves and cancels wait for delivery."""
        return len(self._ends) + len(self._cancels)

    def bump(self, names: Sequence[str]) -> None:
        """Invalidate ``names`` now. Raises only :class:`Unavailable`."""
        near = self.near
        if near is not None:
            near.drop(names)
        try:
            self._call(self._bump, self._vkeys(names), [])
        except Unavailable:
            raise
        except Exception as err:  # pragma: no cover - _call wraps everything
            raise Unavailable(repr(err)) from err
        finally:
            if near is not None:
                near.drop(names)

    # -- the app-wide switch (QueryCache.disable_app_wide)

    def get_switch(self) -> bool:
        """Whether caching is disabled app-wide (raises on a Redis error)."""
        return bool(self.client.exists(f"{self._tag}:disabled"))

    def set_switch(self, disabled: bool) -> None:
        """Disable (or enable again) caching for every process of this namespace."""
        key = f"{self._tag}:disabled"
        try:
            if disabled:
                self.client.set(key, str(time.time()))
            else:
                self.client.delete(key)
        except Exception as err:
            raise Unavailable(f"cannot set the app-wide switch: {err!r}") from err

    def check_boot(self) -> bool:
        """Run the boot check now; True if it found a new server (and reset the epoch)."""
        reset = bool(self._call(self._boot, [self._epoch_key, self._boot_key],
                                [int(self.lease * 1000), fresh_version(), 1]))  # fmt: skip
        if reset and self.near is not None:
            self.near.clear()
        return reset

    def _beat(self) -> None:
        interval = self.lease / 3
        while not self._stop.wait(interval):
            try:  # renews the epoch; a restarted server gets a fresh one
                reset = self._boot(keys=[self._epoch_key, self._boot_key],
                                   args=[int(self.lease * 1000), fresh_version(), 1])  # fmt: skip
                if reset and self.near is not None:
                    self.near.clear()
            except Exception:
                self._circuit.failed()  # Redis away: the epoch is left to expire, by design
                continue
            self._ok()
            if self._ends or self._cancels:
                self._arm_timer(0.0)

    def close(self) -> None:
        """Stop the heartbeat; deliver what this process still owes (best effort)."""
        self._stop.set()
        if self.near is not None:
            self.near.close()
        try:
            self.flush()
            pending = getattr(self._local, "pending", None)
            if pending:
                self.wait(pending[-1])
        except Exception:
            pass  # unreachable: the marks expire with their TTL
        timer = self._flush_timer
        if timer is not None:
            timer.cancel()

    def __repr__(self) -> str:
        kw = getattr(getattr(self.client, "connection_pool", None), "connection_kwargs", {})
        where = f"{kw.get('host')}:{kw.get('port')}/{kw.get('db')}" if kw else "cluster"
        return f"<RedisVersions {where} lease={self.lease:g}s>"


#: the table of the "sql" version store (created by the alembic branch in migrations/)
SQL_TABLE = "querycache_versions"
#: the pseudo-name every commit bumps (tracking.ANY_TABLE): the sql store never
#: writes a row for it next to real tables, readers derive it (see SqlVersions)
_ANY = "@any"
_SQL_DIALECTS = ("postgresql", "sqlite", "mysql", "mariadb")


def _shares_connections(pool: Any) -> bool:
    """A pool that hands one connection to every caller (in-memory SQLite's)."""
    from sqlalchemy.pool import AssertionPool, SingletonThreadPool, StaticPool

    return isinstance(pool, (StaticPool, SingletonThreadPool, AssertionPool))


def _derived_any(rows: dict[str, int]) -> int:
    """The version of ``@any``: a digest of every row, so any bump of any table changes it."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(rows):
        h.update(f"{name}\0{rows[name]}\n".encode())
    return int.from_bytes(h.digest(), "big") & ((1 << 62) - 1)


class _Source:
    """Where the versions of one application pool are read and bumped on their own.

    A pool of its own (``QueuePool``, or ``NullPool`` if the application chose
    no pooling) built like the application's: the same creator (so the same
    ``connect_args`` and ``do_connect`` hooks), the same connect/checkout
    listeners, the same dialect; its connections are put in autocommit once,
    when made, and are never reset on return (nothing to roll back). Lookups
    never take a connection of the application's pool.
    """

    def __init__(self, app_pool: Any, dialect: Any, where: str, store: SqlVersions):
        from sqlalchemy import event
        from sqlalchemy.pool import NullPool, QueuePool

        self.dialect = dialect
        self.where = where
        self.pid = os.getpid()
        self.circuit = _Circuit(store.cooldown)
        self.pool: Any = None
        if _shares_connections(app_pool):
            return  # read() refuses: no connection of our own can be had
        kw: dict[str, Any] = {
            "recycle": getattr(app_pool, "_recycle", -1),
            "pre_ping": getattr(app_pool, "_pre_ping", False),
            "reset_on_return": None,
            "dialect": getattr(app_pool, "_dialect", None),
            "_dispatch": app_pool.dispatch,  # the dialect's and the user's connect hooks
        }
        if isinstance(app_pool, NullPool):
            cls: Any = NullPool
        else:
            cls = type(app_pool) if isinstance(app_pool, QueuePool) else QueuePool
            kw.update(pool_size=store.pool_size, max_overflow=store.max_overflow,
                      timeout=store.pool_timeout)  # fmt: skip
        self.pool = cls(app_pool._creator, **kw)
        dialect = self.dialect

        def autocommit(dbapi_connection: Any, record: Any) -> None:
            dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")

        event.listen(self.pool, "connect", autocommit)

    def run(self, work: Any) -> Any:
        """``work(cursor)`` on one of this source's connections. Raises only Unavailable."""
        from sqlalchemy.exc import MissingGreenlet
        from sqlalchemy.exc import TimeoutError as PoolTimeout

        if self.pool is None:
            raise Unavailable(
                f"the sql version store cannot read {self.where}: its pool hands one "
                f"connection to every caller (StaticPool / SingletonThreadPool), so no "
                f"connection outside the session's transaction exists; use versions='local'"
            )
        self.circuit.check()
        try:
            conn = self.pool.connect()
        except (PoolTimeout, MissingGreenlet) as err:  # busy, or an async driver called
            # from outside its greenlet (invalidate() in async code): not an outage
            raise Unavailable(f"sql version store cannot connect now: {err}") from None
        except Exception as err:
            self.circuit.failed()
            raise Unavailable(f"sql version store unreachable: {err!r}") from None
        try:
            cursor = conn.cursor()
            try:
                out = work(cursor)
            finally:
                cursor.close()
        except Exception as err:
            conn.invalidate()  # whatever state it is in, it is not reused
            if not isinstance(err, MissingGreenlet):
                self.circuit.failed()
            raise Unavailable(f"sql version store failed: {err!r}") from None
        finally:
            conn.close()
        self.circuit.ok()
        return out

    def dispose(self) -> None:
        if self.pool is not None:
            self.pool.dispose()


class SqlVersions:
    """Versions in a table of the application's own database.

    **Writes.** The bump runs on the writer's connection inside its
    transaction, just before the commit (in a savepoint, so a failure here can
    never abort the user's transaction): invalidation commits atomically with
    the data and cannot be lost by a crash between the two. A statement that
    commits by itself (an autocommit connection, ``COMMIT PREPARED``) has no
    transaction to ride on: its tables are bumped on the store's own
    connection before it runs and again after it ran.

    **No hot row.** Every commit also invalidates the pseudo-name ``@any``
    (what reads of unnamed tables depend on). A row for it would be locked by
    every writing transaction until its commit, serialising unrelated
    commits, so no row is written for it when a commit bumps real tables;
    a lookup that needs ``@any`` derives it from every row (any bump changes
    it). ``@all`` and ``@region:<name>`` are rows, bumped only by unattributable
    writes and the manual ``invalidate_*`` calls.

    **Reads.** Lookups read the table on a connection of a small pool the
    store keeps per application pool (``pool_size`` + ``max_overflow``, waiting
    at most ``pool_timeout`` s), in autocommit: one primary-key query that
    sees every committed bump, taken before the query runs, and never a
    second connection of the application's pool. A lookup the store cannot
    answer (table missing, database unreachable, its pool busy) bypasses the
    cache: the query runs uncached. After a failure the store skips the
    database for ``cooldown`` s (those lookups bypass at once).

    ``engine`` (an ``Engine`` or ``AsyncEngine``): the database of manual
    invalidations made before this process has read or written anything.
    Without it the store learns databases from the queries and commits it
    sees, and ``invalidate()`` before any of them raises ConfigurationError.
    Supports PostgreSQL, MySQL/MariaDB, SQLite (a file: an in-memory database
    has only the session's connection, use ``"local"`` there).
    """

    kind = "sql"
    needs_bind = True
    retry_window = 0.0

    def __init__(
        self,
        engine: Any = None,
        *,
        table_name: str = SQL_TABLE,
        pool_size: int = 2,
        max_overflow: int = 6,
        pool_timeout: float = TIMEOUT,
        cooldown: float = 1.0,
    ):
        from sqlalchemy import BigInteger, Column, MetaData, String, Table
        from sqlalchemy.engine import Engine

        from .exc import ConfigurationError

        def number(name: str, value: Any, minimum: float, integral: bool) -> None:
            kinds = (int,) if integral else (int, float)
            if (isinstance(value, bool) or not isinstance(value, kinds)
                    or not math.isfinite(value) or value < minimum):  # fmt: skip
                what = "an int" if integral else "a number of seconds"
                raise ConfigurationError(f"{name} must be {what} >= {minimum}, got {value!r}")

        number("pool_size", pool_size, 1, True)
        number("max_overflow", max_overflow, 0, True)
        number("pool_timeout", pool_timeout, 0, False)
        number("cooldown", cooldown, 0, False)
        if not isinstance(table_name, str) or not table_name:
            raise ConfigurationError(f"table_name must be a non-empty str, got {table_name!r}")
        if engine is not None:
            engine = getattr(engine, "sync_engine", engine)  # an AsyncEngine
            if not isinstance(engine, Engine):
                raise ConfigurationError(
                    f"engine must be a SQLAlchemy Engine or AsyncEngine, got {engine!r}"
                )
            if engine.dialect.name not in _SQL_DIALECTS:
                raise ConfigurationError(
                    f"the sql version store supports {', '.join(_SQL_DIALECTS)}; "
                    f"not {engine.dialect.name}"
                )
            if _shares_connections(engine.pool):
                raise ConfigurationError(
                    f"the sql version store needs connections of its own to {engine.url!r}, "
                    f"whose pool hands one connection to every caller ({type(engine.pool).__name__}"
                    f"): use versions='local' for a database only one connection can reach"
                )
        from .sqlshared import STATS_TABLE, stats_table

        metadata = MetaData()
        self.table = Table(
            table_name,
            metadata,
            Column("name", String(255), primary_key=True),
            Column("version", BigInteger, nullable=False),
        )
        #: app-wide counters and the app-wide switch (:mod:`.sqlshared`)
        self.stats_table = stats_table(metadata, STATS_TABLE)
        self.engine = engine
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.pool_timeout = float(pool_timeout)
        self.cooldown = float(cooldown)
        # per application pool (an engine's execution_options() copies share it)
        self._sources: weakref.WeakKeyDictionary[Any, _Source] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._select_sql: dict[tuple[Any, tuple[str, ...]], str] = {}
        # commits outside a transaction: names -> source, bumped again after them
        self._after: dict[int, tuple[tuple[str, ...], _Source | None]] = {}
        if engine is not None:
            self._source(engine)

    def create_tables(self, engine: Any) -> None:
        """Create the store's tables (versions, app-wide stats) where missing.

        For tests and quick starts; in production the alembic branch
        ``querycache`` creates them (``alembic upgrade querycache@head``).
        """
        engine = getattr(engine, "sync_engine", engine)
        self.table.metadata.create_all(engine)

    def _source(self, engine: Any) -> _Source:
        pool = engine.pool
        src = self._sources.get(pool)
        if src is None or src.pid != os.getpid():
            with self._lock:
                src = self._sources.get(pool)
                # a forked child never uses its parent's sockets: a new pool, the
                # parent's connections left alone (as Engine.dispose(close=False))
                if src is None or src.pid != os.getpid():
                    where = engine.url.render_as_string(hide_password=True)
                    src = self._sources[pool] = _Source(pool, engine.dialect, where, self)
        return src

    def _targets(self) -> list[_Source]:
        pid = os.getpid()
        with self._lock:
            for pool, src in list(self._sources.items()):
                if src.pid != pid:  # after a fork: the child's own pool
                    self._sources[pool] = _Source(pool, src.dialect, src.where, self)
            targets = list(self._sources.values())
        if not targets:
            from .exc import ConfigurationError

            raise ConfigurationError(
                "the sql version store knows no database yet (this process has not run a "
                "query or a commit through it): give it one, QueryCache(versions="
                "SqlVersions(engine)) or QueryCache(versions=engine)"
            )
        return targets

    # -- reads, on the store's own autocommit connections

    def read(self, names: Sequence[str], bind: Any = None) -> list[int] | None:
        """Current versions of ``names`` (``@any`` derived from every row). Raises Unavailable."""
        engine = bind.engine if bind is not None else self.engine
        if engine is None:
            raise Unavailable("the sql version store needs the query's bind")
        src = self._source(engine)
        names = tuple(names)
        derive = _ANY in names
        sql = self._select_for(src.dialect, names)

        def work(cursor: Any) -> dict[str, int]:
            cursor.execute(sql)
            found = {name: version for name, version in cursor.fetchall()}
            missing = sorted({n for n in names if n not in found and n != _ANY})
            if missing:  # a fresh random start: no older incarnation can match (I4)
                cursor.execute(self._insert_missing_sql(src.dialect, missing))
                cursor.execute(sql)
                found = {name: version for name, version in cursor.fetchall()}
            return found

        found = src.run(work)
        if derive:
            found[_ANY] = _derived_any(found)
        try:
            return [found[n] for n in names]
        except KeyError as err:  # deleted between our insert and select: ask again later
            raise Unavailable(f"version row {err} vanished") from None

    def _select_for(self, dialect: Any, names: tuple[str, ...]) -> str:
        memo = self._select_sql
        key = (dialect, names)
        sql = memo.get(key)
        if sql is None:
            from sqlalchemy import select

            t = self.table
            stmt = select(t.c.name, t.c.version)
            if _ANY not in names:  # else every row: @any is derived from them all
                stmt = stmt.where(t.c.name.in_(sorted(set(names))))
            sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            if len(memo) > 4096:
                memo.clear()
            memo[key] = sql
        return sql

    def _insert_missing_sql(self, dialect: Any, names: Sequence[str]) -> str:
        t = self.table
        rows = [{"name": n, "version": fresh_version()} for n in names]
        name = dialect.name
        stmt: Any
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            stmt = insert(t).values(rows).on_conflict_do_nothing(index_elements=["name"])
        elif name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(t).values(rows).on_conflict_do_nothing(index_elements=["name"])
        elif name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(t).values(rows).on_duplicate_key_update(version=t.c.version)
        else:
            raise NotImplementedError(f"the sql version store does not support {name}")
        return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

    # -- writes, inside the writer's transaction

    @staticmethod
    def _rows_of(names: Sequence[str]) -> list[str]:
        """The rows a bump writes: ``@any`` only when nothing else changes (it is derived)."""
        rows = sorted({n for n in names if n != _ANY})
        return rows or [_ANY]

    def _upsert_sql(self, dialect: Any, names: Sequence[str]) -> str:
        """An upsert bumping ``names``, rendered with literals for a raw DBAPI cursor."""
        from sqlalchemy import literal_column

        t = self.table
        rows = [{"name": n, "version": fresh_version()} for n in names]
        plus_one = t.c.version + literal_column("1")
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            ins = insert(t).values(rows)
            stmt: Any = ins.on_conflict_do_update(index_elements=["name"],
                                             set_={"version": plus_one})  # fmt: skip
        elif dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            ins = sqlite_insert(t).values(rows)  # type: ignore[assignment]
            stmt = ins.on_conflict_do_update(index_elements=["name"],
                                             set_={"version": plus_one})  # fmt: skip
        elif dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(t).values(rows).on_duplicate_key_update(version=plus_one)
        else:
            raise NotImplementedError(f"the sql version store does not support {dialect.name}")
        return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))

    def begin_write(self, names: Sequence[str], conn: Any = None) -> None:
        """Bump ``names`` in the transaction of ``conn`` (a Connection about to commit).

        ``conn`` an Engine (a statement that commits by itself) or None: bump
        on the store's own connection now and again in :meth:`end_write`.
        """
        from sqlalchemy.engine import Engine

        if conn is None or isinstance(conn, Engine):
            src = self._source(conn) if conn is not None else None
            key = id(names)
            self._after[key] = (tuple(names), src)
            try:
                self._bump_on([src] if src is not None else self._targets(), names)
            except BaseException:
                self._after.pop(key, None)
                raise
            return
        self._source(conn.engine)  # known from now on: invalidate() can reach it
        sql = self._upsert_sql(conn.dialect, self._rows_of(names))
        # the commit event fires inside Connection._commit_impl: talk to the
        # DBAPI connection directly, and in a savepoint so that an error here
        # (a missing table) rolls back only our statement
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute("SAVEPOINT qc_versions")
            try:
                cursor.execute(sql)
            except Exception:
                cursor.execute("ROLLBACK TO SAVEPOINT qc_versions")
                raise
            cursor.execute("RELEASE SAVEPOINT qc_versions")
        finally:
            cursor.close()

    def end_write(self, names: Sequence[str]) -> None:
        """After a commit: nothing, the bump committed with the data; except after a
        statement that committed by itself, whose tables are bumped again now."""
        key = id(names)
        after = self._after.get(key)
        if after is None or (after[0] is not names and after[0] != tuple(names)):
            return
        src = after[1]
        self._bump_on([src] if src is not None else self._targets(), names)
        self._after.pop(key, None)

    def close(self) -> None:
        """Close the store's own connections (made again if it is used after)."""
        with self._lock:
            sources = list(self._sources.values())
            self._sources.clear()
        for src in sources:
            src.dispose()
        if self.engine is not None:
            self._source(self.engine)

    def bump(self, names: Sequence[str], engines: Any = None) -> None:
        """Invalidate ``names`` now, in every database this store knows (or ``engines``).

        Raises :class:`Unavailable` if a database does not answer, and
        ConfigurationError if the store knows no database at all.
        """
        if engines:  # given by the caller (migrate.invalidating): on their own connections
            rows = self._rows_of(names)
            for engine in engines:
                with engine.begin() as conn:
                    conn = conn.execution_options(_qc_internal=True)
                    conn.exec_driver_sql(self._upsert_sql(engine.dialect, rows))
            return
        self._bump_on(self._targets(), names)

    def _bump_on(self, sources: Sequence[_Source], names: Sequence[str]) -> None:
        rows = self._rows_of(names)
        for src in sources:
            sql = self._upsert_sql(src.dialect, rows)
            src.run(lambda cursor, sql=sql: cursor.execute(sql))

    def __repr__(self) -> str:
        where = ", ".join(sorted(src.where for src in list(self._sources.values())))
        return f"<SqlVersions table={self.table.name!r} databases=[{where}]>"


def _is_engine(spec: Any) -> bool:
    from sqlalchemy.engine import Engine

    return isinstance(getattr(spec, "sync_engine", spec), Engine)


def is_redis_spec(spec: Any) -> bool:
    """Is ``versions=`` a Redis URL or a Redis client (a Redis store is built from it)?"""
    return (isinstance(spec, str) and spec.startswith(("redis://", "rediss://", "unix://"))) or (
        hasattr(spec, "register_script") and hasattr(spec, "pipeline")
    )


def make_version_store(
    spec: Any, namespace: str, *, lease: float | None = None, require: bool = False
) -> VersionStore:
    """``"local"``, a Redis URL or client, ``"sql"``, or a ready store -> a store.

    ``lease`` applies to the Redis store this builds (None: its default);
    ``require``: a Redis server that does not answer now is a ConfigurationError.
    """
    from .exc import ConfigurationError

    redis_spec = is_redis_spec(spec)
    if lease is not None and not redis_spec:
        where = "the store you built" if not isinstance(spec, str) else f"versions={spec!r}"
        raise ConfigurationError(
            f"lease applies to a Redis version store built from a URL or client; "
            f"not to {where} (a RedisVersions takes its own lease=)"
        )
    if spec is None or spec == "local":
        return LocalVersions()
    if spec == "sql":
        return SqlVersions()
    if _is_engine(spec):
        return SqlVersions(engine=spec)
    if redis_spec:
        if lease is None:
            return RedisVersions(spec, namespace, require=require)
        return RedisVersions(spec, namespace, lease=lease, require=require)
    if isinstance(spec, str):  # never echo a URL: it may hold a password
        got = f"a {spec.split('://')[0]}:// URL" if "://" in spec else repr(spec[:40])
        raise ConfigurationError(
            f"versions must be 'local', 'sql', a redis://, rediss:// or unix:// URL, a Redis "
            f"client or a VersionStore; got {got}"
        )
    if all(callable(getattr(spec, m, None)) for m in ("read", "begin_write", "end_write", "bump")):
        if require and getattr(spec, "kind", None) == "redis" and hasattr(spec, "check"):
            try:
                spec.check()
            except Exception as err:
                raise ConfigurationError(
                    f"the version store {spec!r} does not answer ({err}): start it or fix its "
                    f"address, or pass require_versions=False to QueryCache to start without it"
                ) from None
        return spec  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"versions must be 'local', 'sql', a redis:// URL, a Redis client or a VersionStore; "
        f"got {type(spec).__name__}"
    )
