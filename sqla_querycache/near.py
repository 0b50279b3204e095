"""The near cache: version reads answered in process, kept true by Redis's pushes.

Opt-in (``QueryCache(..., near=NearCache(max_staleness=0.05))``), Redis
version store only. A strict hit costs one round trip: the versions of the
entry's tables are read from Redis, because another process may have written
them a microsecond ago. The near cache keeps the versions this process read
last (a *mirror*: table -> version, and the epoch) and forgets a table as soon
as Redis says that one of its keys changed; decoded entries already live in
the process (the read path's memo, bounded by ``max_bytes``), so a hit whose
tables are all in the mirror sends nothing.

How the mirror learns of changes: Redis's client-side tracking in broadcast
mode (``CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX {ns}:v: PREFIX {ns}:m:
PREFIX {ns}:epoch``) pushes the name of every version, mark and epoch key
any client modifies (a bump, a mark, an end, a lease renewal, an expiry, a
flush) to a subscribed connection of ours; a thread of ours reads them.

Why the staleness is bounded, not merely small: pushes travel on one
connection in the order Redis executed the writes. Every ``max_staleness / 3``
the thread publishes a *beat* (its sequence number) to a channel it is
subscribed to on that same connection; when the beat comes back, every change
Redis executed before the beat was sent has been applied to the mirror. The
mirror answers only while the last beat that came back was sent less than
``max_staleness`` ago; otherwise (the push connection down, Redis slow, this
process too busy to read) reads are strict again. So a near hit reflects every
write Redis executed more than ``max_staleness`` before it, and a writer's mark
is executed before its database commit: a read that starts after another
process's ``commit()`` returned sees that write at most ``max_staleness``
later. In practice far sooner: a near read also declines while pushes wait
unread (on the socket, or taken off it by the thread but not applied yet: the
reading thread needs the GIL the reader holds), so what remains is the time a
push takes from Redis to this host. Within the writing process there is no
window at all: every write this
process sends drops its tables from the mirror when it is sent and again when
its reply arrives (read-your-writes holds exactly as in strict mode).

Installing a read in the mirror: a strict read records the mirror's
generation before it is sent and installs what it read only if no change was
applied meanwhile (any push, any local drop, a reconnect: the generation
moves), so a reply that raced a change is never kept. A read that found a
table in flight (marked) installs nothing.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from . import checks, wire
from .exc import ConfigurationError

log = logging.getLogger("sqla_querycache")

#: the epoch's slot in the mirror (no table is named so)
EPOCH = "\0epoch"
#: the mirror holds at most this many tables before it starts again empty
MAX_NAMES = 100_000
_INVALIDATE = b"__redis__:invalidate"
_NOTHING: Any = False  # what an incremental parser answers while a reply is not whole


class NearCache:
    """Opt-in in-process validation of cache hits (see the module's text).

    :param max_staleness: seconds (default 0.05): a read in another process
        than the writer's sees a committed write at most this much later;
        in the writing process at once. At least 0.002, at most 60.
    :param max_bytes: the decoded entries kept in this process (the read
        path's memo) take at most this estimated memory (default 64 MiB).
    """

    def __init__(self, max_staleness: float = 0.05, max_bytes: int = 64 << 20):
        self.max_staleness = checks.seconds("max_staleness", max_staleness, maximum=60.0)
        if self.max_staleness < 0.002:
            raise ConfigurationError(f"max_staleness must be at least 0.002 s, "
                                     f"got {max_staleness!r}")  # fmt: skip
        self.max_bytes = checks.integer("max_bytes", max_bytes, 0)
        #: seconds between two beats
        self.beat_interval = self.max_staleness / 3
        self._versions: Any = None
        self._known: dict[str, int] = {}
        self._gen = 0
        self._lock = threading.Lock()
        self._acked = -1e18  # monotonic send time of the last beat that came back
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._conns: list[Any] = []
        self._sock: Any = None  # the push connection's socket, once tracking is on
        #: held while pushes are taken off the socket and applied (either thread)
        self._io = threading.Lock()
        self._parser: Any = None
        self._beat = b""  # this push connection's beat channel
        self._out: tuple[int, float] | None = None  # the beat on its way: (seq, sent)
        # counters (this process)
        self.hits = 0  #: version reads answered by the mirror
        self.unknown = 0  #: ... not: a table or the epoch not in the mirror
        self.lagging = 0  #: ... not: the last beat that came back is too old
        self.unread = 0  #: ... not: pushes were waiting to be applied
        self.invalidations = 0  #: keys Redis pushed
        self.connects = 0  #: push connections made
        self.lag: float | None = None  #: seconds the last beat took to come back

    # ------------------------------------------------------------ binding

    def attach(self, versions: Any) -> None:
        """Bind to a Redis version store (QueryCache does it); starts the thread."""
        if self._versions is not None:
            raise ConfigurationError("this NearCache is already used by a QueryCache")
        if getattr(versions, "kind", None) != "redis" or getattr(versions, "_cluster", True):
            raise ConfigurationError(
                f"near= needs a single Redis as the version store (versions=<redis URL>), "
                f"got {versions!r}: with local versions every read is already in process; "
                f"with the sql store or a Redis Cluster there is no push channel"
            )
        tag = versions._tag
        self._prefixes = (f"{tag}:v:".encode(), f"{tag}:m:".encode())
        self._epoch_key = versions._epoch_key
        self._versions = versions
        versions.near = self
        ref = weakref.ref(self)

        def forked() -> None:  # a lock another thread held at fork time stays held
            near = ref()
            if near is not None:
                near._lock, near._io = threading.Lock(), threading.Lock()
                near._sock, near._conns, near._known = None, [], {}
                near._acked = -1e18

        os.register_at_fork(after_in_child=forked)
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._known = {}
        self._gen += 1
        self._acked = -1e18
        self._stop = threading.Event()
        self._conns = []
        self._thread = threading.Thread(target=self._run, name="sqla_querycache-near",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and its connections; reads are strict from now on."""
        self._stop.set()
        self._acked = -1e18
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._drop_connections()

    # ------------------------------------------------------------ the mirror

    def fresh(self) -> bool:
        """May the mirror answer now (the last beat came back recently enough)?"""
        if self._pid != os.getpid():  # a forked child: its own thread and connections
            with self._lock:
                if self._pid != os.getpid() and not self._stop.is_set():
                    self._start()
            return False
        return time.monotonic() - self._acked < self.max_staleness

    def get(self, names: Sequence[str]) -> list[int] | None:
        """The versions of ``names`` (epoch first), or None: read them from Redis."""
        if not self.fresh():
            self.lagging += 1
            return None
        # Pushes that arrived but are not applied yet (the reading thread waits
        # for the GIL this thread holds): apply them here, now. The socket
        # first, then the lock the reading thread holds from before it takes
        # bytes off the socket until it applied them.
        sock = self._sock
        try:
            waiting = sock is None or bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):  # closed meanwhile
            waiting = True
        if waiting:
            if sock is None or not self._io.acquire(blocking=False):
                self.unread += 1
                return None
            try:
                self._pump()
            except Exception:  # the connection failed: the thread starts again
                self._acked = -1e18
                self.unread += 1
                return None
            finally:
                self._io.release()
            if not self.fresh():
                self.lagging += 1
                return None
        elif self._io.locked():
            self.unread += 1
            return None
        known = self._known
        try:
            out = [known[EPOCH]]
            out += [known[n] for n in names]
        except KeyError:
            self.unknown += 1
            return None
        self.hits += 1
        return out

    def generation(self) -> int:
        """To pass to :meth:`put` with what a read sent now returns."""
        return self._gen

    def put(self, names: Sequence[str], versions: Sequence[int], gen: int) -> None:
        """Keep what a strict read of ``names`` returned, unless anything changed
        since ``gen`` was taken (the read may have raced that change)."""
        if len(versions) != len(names) + 1:
            return
        with self._lock:
            if gen != self._gen:
                return
            known = self._known
            if len(known) > MAX_NAMES:
                known.clear()
            known[EPOCH] = versions[0]
            known.update(zip(names, versions[1:]))

    def drop(self, names: Sequence[str]) -> None:
        """This process writes ``names`` (or Redis said they changed): forget them."""
        with self._lock:
            self._gen += 1
            known = self._known
            for n in names:
                known.pop(n, None)

    def clear(self) -> None:
        """Forget everything (a flush, a new epoch, a reconnect)."""
        with self._lock:
            self._gen += 1
            self._known.clear()

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        delay = 0.05
        warned = False
        while not self._stop.is_set():
            connects = self.connects
            try:
                self._session()
                delay = 0.05
            except Exception as err:
                if self._stop.is_set():
                    break
                if self.connects == connects and not warned:
                    # never got going (a Redis without tracking, ACLs refusing
                    # CLIENT or SUBSCRIBE, Redis away): say so once
                    warned = True
                    log.warning("near cache: no push channel (%r); reads stay strict "
                                "until it starts (retrying)", err)  # fmt: skip
                else:
                    log.debug("near cache: push connection lost (%r); strict reads", err)
            self._acked = -1e18
            self._sock = None
            self.clear()
            self._drop_connections()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, 1.0)

    def _drop_connections(self) -> None:
        conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.disconnect()
            except Exception:
                pass

    def _connect(self) -> Any:
        from .versions import own_connection

        conn = own_connection(self._versions.client.connection_pool)
        self._conns.append(conn)
        conn.connect()
        return conn

    def _session(self) -> None:
        """One life of the push connection: set up, then beat and apply until it fails."""
        beat = f"{self._versions._tag}:near:{uuid.uuid4().hex}".encode()
        sub = self._connect()
        rs = wire.reader_of(sub)
        rs.send(wire.pack("CLIENT", "ID"))
        cid = int(rs.read())
        rs.send(wire.pack("SUBSCRIBE", _INVALIDATE, beat))
        sock = sub._sock
        parser = _parser()
        confirmed = 0
        while confirmed < 2:  # a push in RESP3, a reply in RESP2: read both ways
            msg = parser.gets()
            if msg is _NOTHING:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by the server")
                parser.feed(data)
            elif isinstance(msg, list) and msg and msg[0] == b"subscribe":
                confirmed += 1
        trk = self._connect()
        rt = wire.reader_of(trk)
        v_prefix, m_prefix = self._prefixes
        rt.send(wire.pack("CLIENT", "TRACKING", "ON", "REDIRECT", cid, "BCAST",
                          "PREFIX", v_prefix, "PREFIX", m_prefix,
                          "PREFIX", self._epoch_key))  # fmt: skip
        rt.read()
        sock.setblocking(False)  # from here the socket is read only when select says so
        with self._io:
            self._parser, self._beat, self._out = parser, beat, None
            # tracking is on: whatever was read before may have missed a push
            self.clear()
            self._sock = sock
        self.connects += 1
        epoch_key = self._epoch_key.encode()
        interval = self.beat_interval
        give_up = max(1.0, 10 * self.max_staleness)  # a beat this late: start again
        seq = 0
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            out: tuple[int, float] | None = self._out
            if out is None and now >= next_beat:
                seq += 1
                self._out = (seq, now)
                # EXISTS first: an epoch past its TTL but not yet expired by Redis
                # is deleted by the lookup, and its push precedes the beat's
                rt.send(wire.pack("EXISTS", epoch_key) + wire.pack("PUBLISH", beat, seq))
                rt.read()
                rt.read()
                next_beat = now + interval
            elif out is not None and now - out[1] > give_up:
                raise TimeoutError("the beat did not come back")
            wait = max(0.0, (next_beat if self._out is None else now + interval)
                        - time.monotonic())  # fmt: skip
            ready, _, _ = select.select([sock], [], [], wait)
            if ready:
                with self._io:
                    self._pump()

    def _pump(self) -> None:
        """Take every push waiting on the socket and apply it (``_io`` held)."""
        sock, parser = self._sock, self._parser
        if sock is None:
            raise ConnectionError("not connected")
        while True:
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                raise ConnectionError("closed by the server")
            parser.feed(data)
            while True:
                msg = parser.gets()
                if msg is _NOTHING:
                    break
                got = self._apply(msg, self._beat)
                sent = self._out
                if got is not None and sent is not None and got == sent[0]:
                    self.lag = time.monotonic() - sent[1]
                    self._acked = sent[1]
                    self._out = None
            if len(data) < 65536:
                break

    def _apply(self, msg: Any, beat: bytes) -> int | None:
        """One push: drop what it names; a beat's number when it is ours."""
        if not isinstance(msg, list) or not msg:
            return None
        kind = msg[0]
        if kind == b"invalidate":  # RESP3: [invalidate, keys]
            self._invalidate(msg[1] if len(msg) > 1 else None)
        elif kind == b"message" and len(msg) >= 3:  # [message, channel, payload]
            if msg[1] == _INVALIDATE:
                self._invalidate(msg[2])
            elif msg[1] == beat:
                try:
                    return int(msg[2])
                except (TypeError, ValueError):
                    return None
        return None

    def _invalidate(self, keys: Any) -> None:
        if keys is None or not isinstance(keys, list):  # FLUSHDB / FLUSHALL
            self.clear()
            return
        self.invalidations += len(keys)
        v_prefix, m_prefix = self._prefixes
        names = []
        for key in keys:
            if not isinstance(key, bytes):
                continue
            if key.startswith(v_prefix):
                names.append(key[len(v_prefix):].decode("utf-8", "replace"))
            elif key.startswith(m_prefix):
                names.append(key[len(m_prefix):].decode("utf-8", "replace"))
            else:  # the epoch (renewed by every process's heartbeat, or new): read it again
                names.append(EPOCH)
        self.drop(names)

    # ------------------------------------------------------------ shell

    def stats(self) -> dict[str, Any]:
        age = time.monotonic() - self._acked
        return {
            "fresh": age < self.max_staleness and self._pid == os.getpid(),
            "max_staleness": self.max_staleness,
            "beat_age": age if age < 1e9 else None,
            "lag": self.lag,
            "tables": max(0, len(self._known) - 1),
            "hits": self.hits,
            "unknown": self.unknown,
            "lagging": self.lagging,
            "unread": self.unread,
            "invalidations": self.invalidations,
            "connects": self.connects,
        }

    def __repr__(self) -> str:
        s = self.stats()
        state = "fresh" if s["fresh"] else "strict"
        lag = "-" if s["lag"] is None else f"{s['lag'] * 1000:.1f}ms"
        return (f"<NearCache max_staleness={self.max_staleness:g}s {state} beat lag={lag} "
                f"hits={s['hits']} strict(unknown={s['unknown']} lagging={s['lagging']} "
                f"unread={s['unread']}) "
                f"tables={s['tables']} invalidations={s['invalidations']}>")  # fmt: skip


class _PyParser:
    """Whole RESP2/RESP3 replies from fed bytes (hiredis's ``Reader`` API), for
    when hiredis is not installed. Pushes (``>``) and sets read as arrays."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf += data

    def gets(self) -> Any:
        try:
            value, pos = self._value(0)
        except IndexError:
            return _NOTHING
        self._buf = self._buf[pos:]
        return value

    def _value(self, pos: int) -> tuple[Any, int]:
        buf = self._buf
        end = buf.index(b"\r\n", pos) if b"\r\n" in buf[pos:] else -1
        if end < 0:
            raise IndexError
        kind, rest, pos = buf[pos:pos + 1], buf[pos + 1:end], end + 2
        if kind in (b"$", b"="):
            n = int(rest)
            if n < 0:
                return None, pos
            if len(buf) < pos + n + 2:
                raise IndexError
            return buf[pos:pos + n], pos + n + 2
        if kind in (b"*", b">", b"~"):
            n = int(rest)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._value(pos)
                items.append(item)
            return items, pos
        if kind in (b":", b"("):
            return int(rest), pos
        if kind == b"_":
            return None, pos
        if kind in (b"+", b"-"):
            return rest, pos
        raise ConnectionError(f"near cache: unexpected reply {buf[:40]!r}")


def _parser() -> Any:
    if wire.NATIVE and wire._hiredis is not None:
        return wire._hiredis.Reader()
    return _PyParser()
