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
import os
import secrets
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol


def fresh_version() -> int:
    """A starting value no earlier incarnation of the store could have used."""
    return secrets.randbits(62)


class VersionStore(Protocol):
    """What :class:`~sqla_querycache.QueryCache` needs of a version store."""

    #: short name shown in repr() and the CLI
    kind: str
    #: True when ``read`` needs the bind of the query (versions in that database)
    needs_bind: bool

    def read(self, names: Sequence[str], bind: Any = None) -> list[int] | None:
        """Current versions of ``names``; ``None`` if any is being written."""

    def begin_write(self, names: Sequence[str], conn: Any = None) -> None:
        """Before a commit (on ``conn``, when known): bump and mark ``names`` in flight."""

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
    """The version store did not answer (or is cooling down after it did not)."""


class _Circuit:
    """After a failure, skip the remote store for ``cooldown`` seconds (fail fast)."""

    __slots__ = ("cooldown", "down_until")

    def __init__(self, cooldown: float):
        self.cooldown = cooldown
        self.down_until = 0.0

    def check(self) -> None:
        if self.down_until and time.monotonic() < self.down_until:
            raise Unavailable("version store cooling down after a failure")

    def failed(self) -> None:
        self.down_until = time.monotonic() + self.cooldown

    def ok(self) -> None:
        self.down_until = 0.0


# KEYS: epoch, v_1..v_n, w_1..w_n   ARGV: lease_ms, new_epoch, new_v_1..new_v_n
_READ_LUA = """
local n = (#KEYS - 1) / 2
local out = {}
local e = redis.call('GET', KEYS[1])
if not e then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  e = ARGV[2]
end
out[1] = e
for i = 1, n do
  local w = redis.call('GET', KEYS[1 + n + i])
  if w and tonumber(w) > 0 then return false end
  local v = redis.call('GET', KEYS[1 + i])
  if not v then
    redis.call('SET', KEYS[1 + i], ARGV[2 + i])
    v = ARGV[2 + i]
  end
  out[i + 1] = v
end
return out
"""
# One script for both halves of a write, so a commit's begin carries the
# previous commits' ends in the same round trip.
# KEYS: begin v_1..v_b, begin w_1..w_b, end v_1..v_e, end w_1..w_e
# ARGV: in-flight ttl ms, b, e
_WRITE_LUA = """
local b = tonumber(ARGV[2])
local e = tonumber(ARGV[3])
for i = 1, e do
  redis.call('INCR', KEYS[2 * b + i])
  if redis.call('DECR', KEYS[2 * b + e + i]) <= 0 then redis.call('DEL', KEYS[2 * b + e + i]) end
end
for i = 1, b do
  redis.call('INCR', KEYS[i])
  redis.call('INCR', KEYS[b + i])
  redis.call('PEXPIRE', KEYS[b + i], ARGV[1])
end
return b + e
"""
_BUMP_LUA = """
for i = 1, #KEYS do redis.call('INCR', KEYS[i]) end
return #KEYS
"""


NoScriptError: Any = Exception  # redis.exceptions.NoScriptError, bound on first use


class _Ticket:
    """The reply of one write script sent ahead (see RedisVersions.begin_async)."""

    __slots__ = ("conn", "done", "ends", "error", "lua", "reply")

    def __init__(self, ends: list[str], lua: str = ""):
        self.done = False
        self.error: BaseException | None = None
        self.ends = ends
        self.lua = lua  # the script's source, to load it again after NOSCRIPT
        self.reply: Any = None
        self.conn: Any = None  # the connection whose reply it is


class RedisVersions:
    """Versions in Redis, shared by every process; one round trip per lookup.

    All keys of one namespace share a hash tag (``{qc}``), so they live in one
    Redis Cluster slot and each operation is one atomic script.

    Outages: an *epoch* key with a short TTL (``lease``) is part of every
    entry's versions and is kept alive by a heartbeat of each process. If
    Redis stops answering, nobody renews it; a writer that cannot mark its
    tables before its commit keeps retrying for ``lease`` seconds before it
    commits, so by the time Redis could serve anyone again after such a
    commit the epoch has expired and every older entry is unreachable.
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
    ):
        from .exc import ConfigurationError

        if isinstance(client, str):
            try:
                import redis
            except ImportError as err:  # pragma: no cover
                raise ConfigurationError("versions=<redis URL> needs the 'redis' extra") from err
            client = redis.Redis.from_url(
                client, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=0
            )
        if not hasattr(client, "register_script"):
            raise ConfigurationError(f"not a redis client: {client!r}")
        global NoScriptError
        from redis.exceptions import NoScriptError

        if lease <= 0 or in_flight_ttl <= 0:
            raise ConfigurationError("lease and in_flight_ttl must be positive")
        self.client = client
        #: a Redis Cluster client (no single connection pool): no pipelined scripts
        self._cluster = not hasattr(client, "connection_pool")
        self.namespace = namespace
        self.lease = float(lease)
        self.in_flight_ttl = float(in_flight_ttl)
        self.retry_window = self.lease
        self._tag = "{" + namespace + "}"
        self._epoch_key = f"{self._tag}:epoch"
        self._read = client.register_script(_READ_LUA)
        self._write = client.register_script(_WRITE_LUA)
        self._bump = client.register_script(_BUMP_LUA)
        self._ends: list[str] = []  # post-commit halves not delivered yet
        self._local = threading.local()  # each thread's connection for writes
        self._ends_lock = threading.Lock()
        self._flush_timer: threading.Timer | None = None
        self.end_delay = 0.02
        self._circuit = _Circuit(cooldown)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if heartbeat:
            self._heartbeat = threading.Thread(
                target=self._beat, name="sqla_querycache-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def _vkeys(self, names: Sequence[str]) -> list[str]:
        return [f"{self._tag}:v:{n}" for n in names]

    def _wkeys(self, names: Sequence[str]) -> list[str]:
        return [f"{self._tag}:w:{n}" for n in names]

    def _call(self, script: Any, keys: list[str], args: list[Any], client: Any = None) -> Any:
        self._circuit.check()
        try:
            out = script(keys=keys, args=args, client=client)
        except Exception:
            self._circuit.failed()
            raise
        self._circuit.ok()
        return out

    def read_args(self, names: Sequence[str]) -> tuple[list[str], list[Any]]:
        keys = [self._epoch_key, *self._vkeys(names), *self._wkeys(names)]
        args = [int(self.lease * 1000), fresh_version()]
        args.extend(fresh_version() for _ in names)
        return keys, args

    @staticmethod
    def parse(raw: Any) -> list[int] | None:
        if not raw:
            return None
        return [int(v) for v in raw]

    def read(self, names: Sequence[str], bind: Any = None) -> list[int] | None:
        return self._lookup(self.client, None, names)[1]

    def read_with_entry(self, entry_client: Any, key: str, names: Sequence[str]) -> tuple[Any, Any]:
        """The entry and the versions in one round trip (a pipeline on one server)."""
        return self._lookup(entry_client, key, names)

    def _lookup(self, client: Any, key: str | None, names: Sequence[str]) -> tuple[Any, Any]:
        """One pipeline: this process's undelivered post-commit halves, the entry, the versions.

        Delivering the halves first means a process reads its own commits'
        tables as settled at once, instead of bypassing them until the timer.
        """
        self._circuit.check()
        keys, args = self.read_args(names)
        if self._cluster:  # a cluster pipeline refuses scripts; these keys share one slot
            if self._ends:
                self._send(())
            return None, self.parse(self._call(self._read, keys, args))
        if key is None and not self._ends:  # one command: this thread's own connection
            return None, self.parse(self._read_direct(keys, args))
        with self._ends_lock:
            ends, self._ends = self._ends, []
        try:
            try:
                out = self._pipelined(client, key, keys, args, ends)
            except NoScriptError:  # a restarted or flushed server: load the scripts again
                self.client.script_load(_READ_LUA)
                self.client.script_load(_WRITE_LUA)
                out = self._pipelined(client, key, keys, args, ends)
        except Exception:
            with self._ends_lock:
                self._ends[:0] = ends  # keep them for the next attempt
            self._circuit.failed()
            raise
        self._circuit.ok()
        return (out[-2] if key is not None else None), self.parse(out[-1])

    def _pipelined(self, client: Any, key: str | None, keys: list[str], args: list[Any],
                   ends: list[str]) -> Any:  # fmt: skip
        # EVALSHA directly: a Script object in a pipeline costs an extra
        # SCRIPT EXISTS round trip on every execute()
        pipe = client.pipeline(transaction=False)
        if ends:
            pipe.evalsha(self._write.sha, *self._write_args((), ends))
        if key is not None:
            pipe.get(key)
        pipe.evalsha(self._read.sha, len(keys), *keys, *args)
        return pipe.execute()

    def same_server(self, other: Any) -> bool:
        try:
            a = self.client.connection_pool.connection_kwargs
            b = other.connection_pool.connection_kwargs
        except AttributeError:
            return False
        fields = ("host", "port", "db", "path", "username")
        return all(a.get(f) == b.get(f) for f in fields)

    def _send(self, begin: Sequence[str]) -> None:
        if self._cluster:
            with self._ends_lock:
                ends, self._ends = self._ends, []
            numkeys, *rest = self._write_args(begin, ends)
            try:
                self._call(self._write, rest[:numkeys], rest[numkeys:])
            except Exception:
                with self._ends_lock:
                    self._ends[:0] = ends
                raise
            return
        ticket = self.begin_async(begin)
        if not self.wait(ticket):
            raise Unavailable(f"version store write failed: {ticket.error!r}")

    def _write_args(self, begin: Sequence[str], ends: Sequence[str]) -> list[Any]:
        """EVALSHA arguments of ``_WRITE_LUA`` after the sha: numkeys, KEYS, ARGV."""
        keys = [*self._vkeys(begin), *self._wkeys(begin), *self._vkeys(ends), *self._wkeys(ends)]
        return [len(keys), *keys, int(self.in_flight_ttl * 1000), len(begin), len(ends)]

    # -- scripts on a connection each thread keeps, replies read in order

    def _read_direct(self, keys: list[str], args: list[Any]) -> Any:
        for _ in range(2):  # once more after NOSCRIPT
            ticket = self._send_script(self._read.sha, _READ_LUA, [len(keys), *keys, *args], [])
            if self.wait(ticket):
                return ticket.reply
            if not isinstance(ticket.error, NoScriptError):
                break
        raise Unavailable(f"version store read failed: {ticket.error!r}")

    def _send_script(self, sha: str, lua: str, args: list[Any], ends: list[str]) -> _Ticket:
        ticket = _Ticket(ends, lua)
        local = self._local
        try:
            self._circuit.check()
            conn = self._thread_connection()
            conn.send_command("EVALSHA", sha, *args)
            ticket.conn = conn
            local.pending.append(ticket)
        except Exception as err:
            self._fail_connection(err)
            self._resolve(ticket, err)
        return ticket

    def begin_async(self, names: Sequence[str]) -> _Ticket:
        """Send ``begin_write(names)`` now, read its reply later with :meth:`wait`.

        A writer sends it when it first writes a table, so the round trip
        overlaps its own statements and only its reply is awaited before the
        commit. Replies on one thread's connection arrive in order. (A pooled
        call would also cost a checkout, a parser and a release each time.)
        """
        with self._ends_lock:
            ends, self._ends = self._ends, []
        return self._send_script(self._write.sha, _WRITE_LUA, self._write_args(names, ends), ends)

    def wait(self, ticket: _Ticket) -> bool:
        """Read replies until ``ticket``'s arrived; True if its script ran.

        False also when asked from another thread than the one that sent it
        (its reply is on that thread's connection): the caller marks again.
        """
        local = self._local
        if not ticket.done and ticket.conn is not getattr(local, "conn", None):
            return False
        while not ticket.done:
            try:
                reply = local.conn.read_response()
            except NoScriptError as err:
                failed = local.pending.popleft()
                self.client.script_load(failed.lua)
                self._resolve(failed, err)
                continue
            except Exception as err:
                self._fail_connection(err)
                break
            self._resolve(local.pending.popleft(), reply)
        if ticket.done and ticket.error is None:
            self._circuit.ok()
            return True
        return False

    def _resolve(self, ticket: _Ticket, outcome: Any) -> None:
        ticket.done = True
        ticket.reply = outcome
        if isinstance(outcome, BaseException):
            ticket.error = outcome
            if ticket.ends:  # deliver them later
                self._queue_ends(ticket.ends)

    def _fail_connection(self, err: BaseException) -> None:
        """The thread's connection failed: every reply it owed is lost."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None:
            conn.disconnect()
        local.conn = None
        for ticket in getattr(local, "pending", ()):
            self._resolve(ticket, err)
        local.pending = collections.deque()
        self._circuit.failed()

    def begin_write(self, names: Sequence[str], conn: Any = None) -> None:
        self._send(names)

    def end_write(self, names: Sequence[str]) -> None:
        """Send the post-commit half now without waiting for its reply.

        Until it lands the tables stay marked, so every reader bypasses them:
        a late or lost end costs cache hits, never correctness. If it cannot
        be sent, it is queued and rides on the next lookup or write, or a
        short timer.
        """
        if not self._cluster and self._send_end(list(names)):
            return
        self._queue_ends(names)

    def _thread_connection(self) -> Any:
        """This thread's own connection (a new one after a fork: never share a socket)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = local.conn = self.client.connection_pool.make_connection()
            local.pending = collections.deque()
            local.pid = os.getpid()
        return conn

    def _send_end(self, names: list[str]) -> bool:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid() or self._circuit.down_until:
            return False
        # on failure its names go back to the queue
        ticket = self._send_script(self._write.sha, _WRITE_LUA, self._write_args((), names), names)
        if ticket.done:
            return True  # failed at once; _resolve queued the names again
        if len(local.pending) > 64:  # replies owed pile up only if this thread never waits
            self.wait(local.pending[-1])
        return True

    def _queue_ends(self, names: Sequence[str]) -> None:
        with self._ends_lock:
            self._ends.extend(names)
            if self._flush_timer is None:
                self._flush_timer = threading.Timer(self.end_delay, self._flush)
                self._flush_timer.daemon = True
                self._flush_timer.start()

    def _flush(self) -> None:
        with self._ends_lock:
            self._flush_timer = None
            if not self._ends:
                return
        try:
            self._send(())
        except Exception:
            with self._ends_lock:  # Redis away: try again later
                if self._flush_timer is None:
                    self._flush_timer = threading.Timer(max(self.end_delay, 0.5), self._flush)
                    self._flush_timer.daemon = True
                    self._flush_timer.start()

    def flush(self) -> None:
        """Deliver queued post-commit halves now (raises if Redis is away)."""
        with self._ends_lock:
            pending = bool(self._ends)
        if pending:
            self._send(())

    def bump(self, names: Sequence[str]) -> None:
        self._call(self._bump, self._vkeys(names), [])

    def _beat(self) -> None:
        interval = self.lease / 3
        while not self._stop.wait(interval):
            try:
                self.client.pexpire(self._epoch_key, int(self.lease * 1000))
            except Exception:
                pass  # Redis away: the epoch is left to expire, by design

    def close(self) -> None:
        """Stop the heartbeat; deliver what this process still owes (best effort)."""
        self._stop.set()
        try:
            self.flush()
            pending = getattr(self._local, "pending", None)
            if pending:
                self.wait(pending[-1])
        except Exception:
            pass  # unreachable: the marks expire with their TTL

    def __repr__(self) -> str:
        kw = getattr(getattr(self.client, "connection_pool", None), "connection_kwargs", {})
        where = f"{kw.get('host')}:{kw.get('port')}/{kw.get('db')}" if kw else "cluster"
        return f"<RedisVersions {where} lease={self.lease:g}s>"


#: the table of the "sql" version store (created by the alembic branch in migrations/)
SQL_TABLE = "querycache_versions"


class SqlVersions:
    """Versions in a table of the application's own database.

    The bump runs on the writer's connection inside its transaction, just
    before the commit (in a savepoint, so a failure here can never abort the
    user's transaction): invalidation commits atomically with the data and
    cannot be lost by a crash between the two. Lookups read the table on a
    separate autocommit connection: one small primary-key query per lookup,
    the price of that guarantee. Supports PostgreSQL, MySQL/MariaDB, SQLite.
    """

    kind = "sql"
    needs_bind = True
    retry_window = 0.0

    def __init__(self, table_name: str = SQL_TABLE):
        from sqlalchemy import BigInteger, Column, MetaData, String, Table

        self.table = Table(
            table_name,
            MetaData(),
            Column("name", String(255), primary_key=True),
            Column("version", BigInteger, nullable=False),
        )
        self._engines: weakref.WeakSet[Any] = weakref.WeakSet()
        self._sql: dict[Any, str] = {}

    # -- reads, on a separate autocommit connection

    def read(self, names: Sequence[str], bind: Any = None) -> list[int] | None:
        from sqlalchemy import select

        engine = bind.engine
        self._engines.add(engine)
        t = self.table
        with engine.connect().execution_options(
            isolation_level="AUTOCOMMIT", _qc_internal=True
        ) as conn:
            found = dict(
                conn.execute(select(t.c.name, t.c.version).where(t.c.name.in_(names))).all()
            )
            missing = [n for n in names if n not in found]
            if missing:
                conn.execute(
                    self._insert_missing(engine.dialect),
                    [{"name": n, "version": fresh_version()} for n in missing],
                )
                found.update(
                    conn.execute(select(t.c.name, t.c.version).where(t.c.name.in_(missing))).all()
                )
        return [found[n] for n in names]

    def _insert_missing(self, dialect: Any) -> Any:
        name = dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            return insert(self.table).on_conflict_do_nothing(index_elements=["name"])
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(self.table).on_conflict_do_nothing(index_elements=["name"])
        if name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(self.table)
            return stmt.on_duplicate_key_update(version=self.table.c.version)
        raise NotImplementedError(f"the sql version store does not support {name}")

    # -- writes, inside the writer's transaction

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
        if conn is None:
            return self.bump(names)
        self._engines.add(conn.engine)
        sql = self._upsert_sql(conn.dialect, sorted(names))
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
        """Nothing to do: the bump committed with the data."""

    def close(self) -> None:
        """Nothing to release."""

    def bump(self, names: Sequence[str], engines: Any = None) -> None:
        targets = list(engines or self._engines)
        if not targets:
            raise Unavailable("the sql version store has not seen a database yet")
        for engine in targets:
            with engine.begin() as conn:
                conn = conn.execution_options(_qc_internal=True)
                conn.exec_driver_sql(self._upsert_sql(engine.dialect, sorted(names)))

    def __repr__(self) -> str:
        return f"<SqlVersions table={self.table.name!r}>"


def make_version_store(spec: Any, namespace: str) -> VersionStore:
    """``"local"``, a Redis URL or client, ``"sql"``, or a ready store -> a store."""
    from .exc import ConfigurationError

    if spec is None or spec == "local":
        return LocalVersions()
    if spec == "sql":
        return SqlVersions()
    if isinstance(spec, str) and spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisVersions(spec, namespace)
    if hasattr(spec, "register_script") and hasattr(spec, "pipeline"):
        return RedisVersions(spec, namespace)
    if all(hasattr(spec, m) for m in ("read", "begin_write", "end_write", "bump")):
        return spec  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"versions must be 'local', 'sql', a redis:// URL, a Redis client or a VersionStore; "
        f"got {spec!r}"
    )
