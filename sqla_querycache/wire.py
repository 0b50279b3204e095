"""RESP on our own Redis connections, without redis-py's per-command machinery.

The version reads, the commit scripts and the deferred entry writes go over
connections this package owns (one per thread, one per region's sender) and
use a handful of commands whose arguments are ``str``, ``bytes`` and ``int``.
redis-py's encoder (a type dispatch per argument) and its pure-Python RESP
parser (a ``readline`` per reply line through a ``BytesIO``) cost ~60 us of
CPU on each of those round trips; measured, a raw socket round trip costs
~13 us of CPU. So these connections are still *made* by redis-py (address,
TLS, AUTH, SELECT, HELLO, our boot check: everything a URL can say), and
then commands are packed by :func:`pack` and replies parsed by
:class:`Reader` straight from the connection's socket.

Replies are parsed by hiredis (the ``redis`` extra installs it) when it is
there, else by the pure-Python parser below; both give the same values
(``tests/test_wire.py`` holds each to redis-py's own). Measured on one read
of five versions: parsing ~12 us in Python, ~3 us in hiredis.

Errors keep redis-py's types (``NoScriptError``, ``ResponseError``,
``TimeoutError``, ``ConnectionError``), and a failed read disconnects the
connection as redis-py's would: a connection whose replies are out of step
is never used again.
"""

from __future__ import annotations

from typing import Any

_hiredis: Any
try:  # the C parser (redis-py's own optional speed-up)
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - the pure-Python parser answers
    _hiredis = None

_CRLF = b"\r\n"
#: use hiredis when installed (False: always the Python parser; tests)
NATIVE = True
#: what hiredis answers while a reply is not whole (RESP3 has a False of its own)
_PARTIAL = object()


def pack(*args: Any) -> bytes:
    """One command in RESP (an array of bulk strings). Arguments: str, bytes, int."""
    return pack_prefix(len(args), *args)


def pack_prefix(count: int, *args: Any) -> bytes:
    """The start of a command of ``count`` arguments: ``args`` are its first ones."""
    out = [b"*%d\r\n" % count]
    append = out.append
    for a in args:
        t = type(a)
        if t is str:
            a = a.encode()
        elif t is int:
            a = b"%d" % a
        elif t is not bytes:
            if t is bytearray or t is memoryview:
                a = bytes(a)
            else:
                raise TypeError(f"cannot send a {t.__name__} to Redis")
        append(b"$%d\r\n" % len(a))
        append(a)
        append(_CRLF)
    return b"".join(out)


_ERRORS: tuple[Any, Any, Any] | None = None


def _errors() -> tuple[Any, Any, Any]:
    """redis-py's error parser and exception types (bound on first use)."""
    global _ERRORS
    if _ERRORS is None:
        from redis._parsers.base import BaseParser
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        _ERRORS = (BaseParser.parse_error, RedisConnectionError, RedisTimeoutError)
    return _ERRORS


class Reader:
    """Replies of one redis-py connection, parsed from its socket.

    Bound to the socket the connection has now: after a reconnect (a new
    socket, whose handshake redis-py read itself) the buffer starts empty.
    """

    __slots__ = ("_buf", "_hr", "_pos", "_sock", "conn", "native")

    def __init__(self, conn: Any, native: bool | None = None):
        self.conn = conn
        self._sock: Any = None
        self._buf = bytearray()
        self._pos = 0
        self._hr: Any = None
        #: hiredis parses
        self.native = (NATIVE if native is None else native) and _hiredis is not None

    def send(self, data: bytes) -> None:
        """Send packed commands (connecting first if needed; redis-py's errors)."""
        sock = self.conn._sock
        if sock is None:
            self.conn.send_packed_command([data], check_health=False)
            return
        # connected: straight to the socket (what send_packed_command does,
        # without its per-call checks), a failure handled as redis-py handles it
        try:
            sock.sendall(data)
        except TimeoutError:  # socket.timeout
            self.conn.disconnect()
            raise _errors()[2]("Timeout writing to socket") from None
        except OSError as err:
            self.conn.disconnect()
            raise _errors()[1](f"Error while writing to socket: {err}") from None
        except BaseException:  # a partial write: the stream is out of step
            self.conn.disconnect()
            raise

    def read(self) -> Any:
        """The next reply; an error reply raises (the stream stays in step)."""
        sock = self.conn._sock
        if sock is not self._sock:
            self._sock = sock
            self._buf = bytearray()
            self._pos = 0
            self._hr = (_hiredis.Reader(replyError=_errors()[0], notEnoughData=_PARTIAL)
                        if self.native else None)  # fmt: skip
        hr = self._hr
        if hr is not None:
            try:
                reply = hr.gets()
                while reply is _PARTIAL:  # not whole yet
                    hr.feed(self._recv())
                    reply = hr.gets()
            except _hiredis.ProtocolError as err:  # out of step: never used again
                self.conn.disconnect()
                raise _errors()[1](f"Protocol error: {err}") from None
            if isinstance(reply, BaseException):
                raise reply
            return reply
        reply = self._value()
        if isinstance(reply, _Error):
            raise reply.exc
        return reply

    # -- parsing

    def _recv(self) -> bytes:
        _, conn_error, timeout_error = _errors()
        sock = self._sock
        if sock is None:
            raise conn_error("not connected")
        try:
            chunk: bytes = sock.recv(65536)
        except TimeoutError:  # socket.timeout
            self.conn.disconnect()
            raise timeout_error("Timeout reading from the Redis socket") from None
        except OSError as err:
            self.conn.disconnect()
            raise conn_error(f"Error while reading from the Redis socket: {err}") from None
        if not chunk:
            self.conn.disconnect()
            raise conn_error("Connection closed by server.")
        return chunk

    def _fill(self) -> None:
        chunk = self._recv()
        buf = self._buf
        if self._pos > 65536:  # drop what was parsed, now and then
            del buf[: self._pos]
            self._pos = 0
        buf += chunk

    def _line(self) -> bytes:
        while True:
            i = self._buf.find(_CRLF, self._pos)
            if i >= 0:
                line = bytes(self._buf[self._pos : i])
                self._pos = i + 2
                return line
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n + 2:
            self._fill()
        start = self._pos
        self._pos = start + n + 2
        return bytes(self._buf[start : start + n])

    def _value(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*" or kind == b"~":
            n = int(rest)
            if n < 0:
                return None
            items = [self._value() for _ in range(n)]
            # an error inside an array is an exception object in it (as redis-py does)
            return [v.exc if type(v) is _Error else v for v in items]
        if kind == b":" or kind == b"(":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"_":
            return None
        if kind == b"-":
            return _Error(rest.decode("utf-8", "replace"))
        if kind == b"%":
            n = int(rest)
            out = {}
            for _ in range(n):
                k = self._value()
                out[k] = self._value()
            return out
        if kind == b"#":
            return rest == b"t"
        if kind == b",":
            return float(rest)
        if kind == b"=":
            return self._exact(int(rest))[4:]  # "txt:" or "mkd:" then the text
        if kind == b"!":
            return _Error(self._exact(int(rest)).decode("utf-8", "replace"))
        if kind == b"|" or kind == b">":  # attributes, or a push: not a reply
            n = int(rest)
            for _ in range(2 * n if kind == b"|" else n):
                self._value()
            return self._value()
        conn_error = _errors()[1]
        self.conn.disconnect()
        raise conn_error(f"Protocol error: unexpected reply {line[:40]!r}")


class _Error:
    """An error reply: raised at the top, kept as an exception inside an array."""

    __slots__ = ("exc",)

    def __init__(self, message: str):
        self.exc = _errors()[0](message)

    def __repr__(self) -> str:
        return repr(self.exc)


def reader_of(conn: Any) -> Reader:
    """The :class:`Reader` of ``conn`` (made once per connection)."""
    r: Reader | None = getattr(conn, "_qc_reader", None)
    if r is None:
        r = conn._qc_reader = Reader(conn)
    return r
