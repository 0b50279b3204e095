"""Our RESP (``sqla_querycache.wire``) against redis-py's, on a real server.

Generated reply trees (nested arrays, integers, byte strings holding CRLF
and every byte value, nils, error replies at the top and inside arrays,
large values that arrive in several reads) are asked of Redis twice: over
a redis-py connection read with its own parser, and over a connection whose
commands are packed by ``wire.pack`` and whose replies are parsed by
``wire.Reader``. Both must give the same values and the same error types,
in RESP2 and RESP3. The raw bytes of a whole reply stream are also replayed
through a socket pair in random fragments: where a read ends must not
matter.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest

redis = pytest.importorskip("redis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sqla_querycache import wire  # noqa: E402

# a reply tree: ("int", n) | ("bytes", b) | ("nil",) | ("err", text) | ("list", [...])
_leaf = st.one_of(
    st.tuples(st.just("int"), st.integers(-(2**53), 2**53)),
    st.tuples(st.just("bytes"), st.binary(max_size=40)),
    st.tuples(st.just("bytes"), st.sampled_from([b"", b"\r\n", b"$3\r\nabc\r\n", b"-ERR x\r\n",
                                                 b"*1\r\n:1\r\n", b"\x00\xff" * 50])),
    st.tuples(st.just("nil")),
    st.tuples(st.just("err"), st.text(alphabet="abcdefgh xyz", min_size=1, max_size=20)),
)
_tree = st.recursive(_leaf, lambda kids: st.tuples(st.just("list"), st.lists(kids, max_size=5)),
                     max_leaves=25)  # fmt: skip


def _lua(tree: Any, argv: list[bytes]) -> str:
    """A Lua expression for ``tree``; byte strings travel as ARGV (no escaping)."""
    kind = tree[0]
    if kind == "int":
        return str(tree[1])
    if kind == "bytes":
        argv.append(tree[1])
        return f"ARGV[{len(argv)}]"
    if kind == "nil":
        return "false"
    if kind == "err":
        return f"redis.error_reply('ERR {tree[1]}')"
    return "{" + ", ".join(_lua(t, argv) for t in tree[1]) + "}"


def _script(tree: Any) -> tuple[str, list[bytes]]:
    argv: list[bytes] = []
    return "return " + _lua(tree, argv), argv


def _normal(value: Any) -> Any:
    """Comparable: exceptions as (type, message)."""
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value))
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _outcome(read: Any) -> Any:
    try:
        return ("ok", _normal(read()))
    except redis.exceptions.ResponseError as err:
        return ("raised", type(err).__name__, str(err))


@pytest.fixture(autouse=True, params=["python", "hiredis"])
def parser(request: Any, monkeypatch: Any) -> str:
    """Every test with each parser: the pure-Python one, and hiredis."""
    if request.param == "hiredis":
        pytest.importorskip("hiredis")
    monkeypatch.setattr(wire, "NATIVE", request.param == "hiredis")
    return str(request.param)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def pair(request: Any, redis_url: str, parser: str) -> Any:
    """(redis-py connection, our connection) to the same server, one protocol."""
    pool = redis.ConnectionPool.from_url(redis_url, protocol=request.param, socket_timeout=5)
    theirs = pool.connection_class(**pool.connection_kwargs)
    ours = pool.connection_class(**pool.connection_kwargs)
    yield theirs, ours
    theirs.disconnect()
    ours.disconnect()
    pool.disconnect()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(trees=st.lists(_tree, min_size=1, max_size=4))
def test_replies_match_redis_py(pair: Any, trees: list[Any]) -> None:
    theirs, ours = pair
    reader = wire.reader_of(ours)
    assert reader.native == wire.NATIVE
    scripts = [_script(t) for t in trees]
    # ours: every command sent at once (as the read path pipelines), then read in order
    reader.send(b"".join(wire.pack("EVAL", lua, 0, *argv) for lua, argv in scripts))
    got = [_outcome(reader.read) for _ in scripts]
    want = []
    for lua, argv in scripts:
        theirs.send_command("EVAL", lua, 0, *argv)
        want.append(_outcome(theirs.read_response))
    assert got == want


def test_large_values_and_plain_commands(pair: Any) -> None:
    """Values larger than one read, and the commands the package sends itself."""
    theirs, ours = pair
    reader = wire.reader_of(ours)
    rng = random.Random(7)
    big = bytes(rng.randrange(256) for _ in range(300_000)) + b"\r\n"
    cmds = [("SET", "qc:wire:a", big), ("GET", "qc:wire:a"), ("SET", "qc:wire:n", 12),
            ("INCR", "qc:wire:n"), ("MGET", "qc:wire:a", "qc:wire:none", "qc:wire:n"),
            ("GET", "qc:wire:none"), ("SET", "qc:wire:a", b"", "PX", 60000),
            ("GET", "qc:wire:a"), ("INCR", "qc:wire:a"), ("PING",), ("DEL", "qc:wire:a")]  # fmt: skip
    reader.send(b"".join(wire.pack(*c) for c in cmds))
    got = [_outcome(reader.read) for _ in cmds]
    want = []
    for c in cmds:
        theirs.send_command(*c)
        want.append(_outcome(theirs.read_response))
    assert got == want
    assert got[1] == ("ok", big)
    assert got[8][0] == "raised"  # INCR of "": an error reply, and the stream went on


def test_noscript_keeps_its_type(pair: Any) -> None:
    _, ours = pair
    reader = wire.reader_of(ours)
    reader.send(wire.pack("EVALSHA", "0" * 40, 0) + wire.pack("PING"))
    with pytest.raises(redis.exceptions.NoScriptError):
        reader.read()
    assert reader.read() in (b"PONG", "PONG")


def _raw_replies(redis_url: str, commands: list[bytes]) -> bytes:
    """The exact bytes Redis sends back for ``commands`` (RESP2, db of the URL)."""
    pool = redis.ConnectionPool.from_url(redis_url)
    kw = pool.connection_kwargs
    sock = socket.create_connection((kw.get("host", "127.0.0.1"), kw.get("port", 6379)))
    try:
        sock.sendall(wire.pack("SELECT", kw.get("db", 0)))
        assert sock.recv(100) == b"+OK\r\n"
        sock.sendall(b"".join(commands))
        data = b""
        while True:  # until every reply is whole
            data += sock.recv(65536)
            if _complete(data, len(commands)):
                return data
    finally:
        sock.close()
        pool.disconnect()


class _Plumbing:
    """The socket end a Reader reads; only argument plumbing (no server logic)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def disconnect(self) -> None:
        self._sock.close()


def _complete(data: bytes, n: int) -> bool:
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        reader = wire.Reader(_Plumbing(b))
        for _ in range(n):
            try:
                reader.read()
            except redis.exceptions.ResponseError:
                pass
        return True
    except redis.exceptions.ConnectionError:
        return False
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("seed", range(6))
def test_where_a_read_ends_does_not_matter(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    commands = [wire.pack("EVAL", "return {1, {ARGV[1], false}, ARGV[2], -7}", 0,
                          b"x\r\n" * rng.randrange(1, 50), bytes(range(256)) * rng.randrange(1, 400)),
                wire.pack("EVAL", "return redis.error_reply('ERR split')", 0),
                wire.pack("SET", "qc:wire:split", b"v" * rng.randrange(0, 70_000)),
                wire.pack("GET", "qc:wire:split"), wire.pack("GET", "qc:wire:missing")]  # fmt: skip
    raw = _raw_replies(redis_url, commands)
    whole = _replay([raw], len(commands))
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randrange(1, 60))))
    pieces = [raw[i:j] for i, j in zip([0, *cuts], [*cuts, len(raw)])]
    assert _replay(pieces, len(commands)) == whole
    one_byte = _replay([raw[i : i + 1] for i in range(min(len(raw), 2000))] + [raw[2000:]],
                       len(commands))  # fmt: skip
    assert one_byte == whole
    assert whole[1][0] == "raised" and whole[4] == ("ok", None)


def _replay(pieces: list[bytes], n: int) -> list[Any]:
    import threading

    a, b = socket.socketpair()
    b.settimeout(5)

    def feed() -> None:
        for p in pieces:
            if p:
                a.sendall(p)

    t = threading.Thread(target=feed)
    t.start()
    try:
        reader = wire.Reader(_Plumbing(b))
        return [_outcome(reader.read) for _ in range(n)]
    finally:
        t.join()
        a.close()
        b.close()


def test_a_silent_server_times_out_and_drops_the_connection(redis_url: str) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, socket_timeout=0.2)
    conn = pool.connection_class(**pool.connection_kwargs)
    try:
        reader = wire.reader_of(conn)
        reader.send(wire.pack("PING"))
        assert reader.read() in (b"PONG", "PONG")
        with pytest.raises(redis.exceptions.TimeoutError):
            reader.read()  # nothing owed: the server says nothing
        assert conn._sock is None  # never used out of step again
        reader.send(wire.pack("PING"))  # a new socket, a fresh buffer
        assert reader.read() in (b"PONG", "PONG")
    finally:
        conn.disconnect()
        pool.disconnect()


def test_pack_refuses_what_it_cannot_send() -> None:
    assert wire.pack("GET", b"k", 5) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n5\r\n"
    with pytest.raises(TypeError):
        wire.pack("SET", "k", 1.5)


def test_a_reply_that_is_not_resp_drops_the_connection(parser: str) -> None:
    """Either parser: bytes that are no RESP reply raise redis-py's ConnectionError
    and disconnect (a stream out of step is never read again)."""
    a, b = socket.socketpair()
    dropped: list[bool] = []

    class Conn(_Plumbing):
        def disconnect(self) -> None:
            dropped.append(True)

    try:
        a.sendall(b"?not a reply\r\n")
        reader = wire.Reader(Conn(b))
        assert reader.native == (parser == "hiredis")
        with pytest.raises(redis.exceptions.ConnectionError):
            reader.read()
        assert dropped
    finally:
        a.close()
        b.close()
