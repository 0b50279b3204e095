"""Configuration is checked at construction, before anything starts.

Every argument of ``QueryCache`` (and of ``RedisVersions``) gets a generated
list of wrong values of every kind (wrong type, bool posing as a number,
NaN / infinity, out of range); each must raise ``ConfigurationError`` naming
the argument, and leave no thread running. A Redis version store must answer
at construction unless ``require_versions=False``.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from dogpile.cache import make_region
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from sqla_querycache import ConfigurationError, FromCache, LocalVersions, QueryCache
from sqla_querycache.versions import RedisVersions

from .conftest import memory_region
from .models import Product

GOOD_SECRET = b"0123456789abcdef"  # exactly 16 bytes
DEAD_REDIS = "redis://user:hunter2hunter2@127.0.0.1:1/0"  # nothing listens on port 1

# ------------------------------------------------------ generated bad values

NOT_NUMBERS = [None, "1", b"1", "1.5", [1], (1,), {1: 1}, object(), 1j, True, False]
NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def bad_ints(minimum: int, maximum: int | None = None) -> list[Any]:
    out = [*NOT_NUMBERS, *NON_FINITE, 1.0, 2.5, float(minimum), minimum - 1, minimum - 1000]
    if maximum is not None:
        out += [maximum + 1, maximum * 1000]
    return out


def bad_seconds(positive: bool = True, maximum: float | None = None) -> list[Any]:
    out = [*NOT_NUMBERS, *NON_FINITE, -1, -0.001, -1e9]
    if positive:
        out += [0, 0.0, -0.0]
    if maximum is not None:
        out += [maximum + 1, maximum * 1000, 1e300]
    return out


BAD_FLAGS = [None, 0, 1, 0.0, "", "yes", "False", b"1", [], [True], object()]


def bad_secrets() -> list[Any]:
    short = [b"", "", b"x" * 15, "x" * 15, "é" * 7, bytearray(15)]  # "é" * 7: 14 bytes
    types = [1, 1.5, True, object(), memoryview(GOOD_SECRET), {GOOD_SECRET}, {"k": GOOD_SECRET}]
    lists = [[], (), [GOOD_SECRET, b"short"], [GOOD_SECRET, 5], [[GOOD_SECRET]], [None]]
    return short + types + lists


BAD_NAMESPACES = [
    "", " ", "a b", "a:b", "{qc}", "qc}", "q{c", "tab\there", "new\nline", "nul\x00",
    "x" * 65, None, 1, b"qc", ["qc"],
]  # fmt: skip


def bad_regions() -> list[Any]:
    unconfigured = make_region()
    return [
        None, {}, [], "default", 1, [("default", memory_region())],
        {"": memory_region()}, {1: memory_region()}, {None: memory_region()},
        {"d": None}, {"d": 42}, {"d": "dogpile.cache.memory"}, {"d": unconfigured},
        {"d": {"arguments": {}}}, {"d": {"backend": "no.such.backend"}},
        {"d": {"backend": "dogpile.cache.memory", "expiration_time": "soon"}},
    ]  # fmt: skip


BAD_VERSIONS = [
    "", "memory", "redis", "redis:/x", "http://127.0.0.1:6379", "sqlite", "LOCAL",
    "postgresql://user:pw1234secret@db/app", 1, 1.5, True, object(), [], {"url": "redis://x"},
    "redis://127.0.0.1:notaport/0",
]  # fmt: skip

#: argument -> wrong values (with the other arguments valid)
BAD: dict[str, list[Any]] = {
    "regions": bad_regions(),
    "namespace": BAD_NAMESPACES,
    "max_entry_bytes": bad_ints(1),
    "lock_timeout": bad_seconds(positive=False),
    "plan_memo_size": bad_ints(1),
    "memo_size": bad_ints(0),
    "memo_bytes": bad_ints(0),
    "plan_memo_bytes": bad_ints(1 << 20),
    "scope": [1, "tenant", b"x", [], object()],
    "versions": BAD_VERSIONS,
    "lease": [v for v in bad_seconds(maximum=3600.0) if v is not None] + [0.0001],  # None: 5 s
    "require_versions": BAD_FLAGS,
    "secret": bad_secrets(),
    "encrypt": BAD_FLAGS,
    "admission": [
        "", "ADAPTIVE", "Always", "sometimes", None, 1, True, b"always", ["always"],
        {"nope": "always"}, {"default": "maybe"}, {"default": None}, {"default": 1},
    ],  # fmt: skip
    "admission_min_samples": bad_ints(1, 1 << 30),
    "admission_probe_calls": bad_ints(1, 1 << 30),
    "admission_probe_seconds": bad_seconds(maximum=86400.0),
}
#: what the message says, when it is not the argument's own name
MENTIONS = {"regions": "region"}

CASES = [(arg, v) for arg, values in BAD.items() for v in values]


def _id(case: Any) -> str:
    arg, v = case
    return f"{arg}={type(v).__name__}:{str(v)[:20]!r}"


def _heartbeats() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqla_querycache-heartbeat"]


def _kwargs(arg: str, value: Any, redis_url: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"regions": {"default": memory_region()}, arg: value}
    if arg == "lease":
        kw["versions"] = redis_url  # lease needs a Redis store; the bad lease must win
    if arg == "encrypt":
        kw["secret"] = GOOD_SECRET
    return kw


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_every_bad_value_is_refused(case: Any, redis_url: str) -> None:
    arg, value = case
    threads = set(threading.enumerate())
    with pytest.raises(ConfigurationError) as info:
        QueryCache(**_kwargs(arg, value, redis_url))
    message = str(info.value)
    assert MENTIONS.get(arg, arg) in message, message
    assert set(threading.enumerate()) <= threads, "a thread was started"
    for secret_text in ("hunter2", "pw1234secret"):
        assert secret_text not in message
    if arg == "secret" and isinstance(value, (str, bytes)) and value:
        assert str(value) not in message and repr(value) not in message


def test_the_generated_lists_are_not_trivial() -> None:
    assert len(CASES) > 150
    assert all(len(v) >= 5 for v in BAD.values())


# a valid value right at each bound
GOOD: dict[str, list[Any]] = {
    "namespace": ["q", "x" * 64, "app-1.v2", "ünï"],
    "max_entry_bytes": [1, 1 << 30],
    "lock_timeout": [0, 0.0, 0.5, 1e6],
    "plan_memo_size": [1, 10**6],
    "memo_size": [0, 10**6],
    "memo_bytes": [0, 1 << 40],
    "plan_memo_bytes": [1 << 20, 1 << 40],
    "scope": [None, lambda: 1, str],
    "require_versions": [True, False],
    "secret": [
        None,
        GOOD_SECRET,
        "x" * 16,
        "é" * 8,
        bytearray(GOOD_SECRET),
        [GOOD_SECRET],
        (GOOD_SECRET, "y" * 40),
    ],  # fmt: skip
    "encrypt": [False],
    "admission": ["adaptive", "always", "never", {}, {"default": "never"}],
    "admission_min_samples": [1, 1 << 30],
    "admission_probe_calls": [1, 1 << 30],
    "admission_probe_seconds": [0.001, 86400],
}


@pytest.mark.parametrize(
    "arg,value", [(a, v) for a, vs in GOOD.items() for v in vs], ids=lambda v: repr(v)[:20]
)
def test_good_values_at_the_bounds_are_accepted(arg: str, value: Any) -> None:
    QueryCache(regions={"default": memory_region()}, **{arg: value}).close()


def test_a_bad_argument_after_versions_starts_nothing(redis_url: str) -> None:
    """Every check runs before the Redis store is built: no heartbeat, no connection."""
    before = set(_heartbeats())
    for kw in ({"memo_size": -1}, {"secret": b"short"}, {"encrypt": "yes", "secret": GOOD_SECRET},
               {"regions": {"d": None}}, {"lease": 0}):  # fmt: skip
        with pytest.raises(ConfigurationError):
            QueryCache(**{"regions": {"default": memory_region()}, "versions": redis_url, **kw})
    assert set(_heartbeats()) <= before, "a heartbeat thread was started"


# ---------------------------------------------------------- encrypt, secret


def test_encrypt_needs_a_secret() -> None:
    with pytest.raises(ConfigurationError, match="encrypt=True needs secret"):
        QueryCache(regions={"default": memory_region()}, encrypt=True)


# ------------------------------------------------------------------- lease


@pytest.mark.parametrize("versions", ["local", "sql", None, "store"])
def test_lease_only_with_a_redis_store(versions: Any) -> None:
    if versions == "store":
        versions = LocalVersions()
    with pytest.raises(ConfigurationError, match="lease applies to a Redis version store"):
        QueryCache(regions={"default": memory_region()}, versions=versions, lease=2.0)


def test_lease_on_a_ready_redis_store_is_refused(redis_url: str) -> None:
    store = RedisVersions(redis_url, heartbeat=False)
    try:
        with pytest.raises(ConfigurationError, match="its own lease"):
            QueryCache(regions={"default": memory_region()}, versions=store, lease=2.0)
    finally:
        store.close()


def test_lease_reaches_redis(redis_url: str, redis_client: Any, sqlite_engine: Any) -> None:
    """QueryCache(lease=...) is the epoch's TTL in Redis (and the commit wait)."""
    ns = f"qccfg{uuid.uuid4().hex[:6]}"
    cache = QueryCache(regions={"default": memory_region()}, versions=redis_url, namespace=ns,
                       lease=2.5)  # fmt: skip
    try:
        assert cache.versions.lease == 2.5
        maker = sessionmaker(sqlite_engine)
        cache.install(maker)
        with maker() as s:
            s.scalars(select(Product).options(FromCache())).all()
        ttl = redis_client.pttl("{" + ns + "}:epoch")
        assert 0 < ttl <= 2500
    finally:
        cache.close()
    default = QueryCache(regions={"default": memory_region()}, versions=redis_url, namespace=ns)
    try:
        assert default.versions.lease == 5.0
    finally:
        default.close()


# ------------------------------------------------- the Redis store answers


def test_an_unreachable_redis_store_is_refused_at_once() -> None:
    before = set(_heartbeats())
    t0 = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        QueryCache(regions={"default": memory_region()}, versions=DEAD_REDIS)
    assert time.monotonic() - t0 < 2.0
    message = str(info.value)
    assert "require_versions=False" in message and "127.0.0.1:1/0" in message
    assert "hunter2" not in message
    assert set(_heartbeats()) <= before, "a heartbeat thread was started"


def test_an_unreachable_redis_client_is_refused() -> None:
    import redis

    client = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.3)
    with pytest.raises(ConfigurationError, match="require_versions=False"):
        QueryCache(regions={"default": memory_region()}, versions=client)


def test_an_unreachable_ready_store_is_refused() -> None:
    store = RedisVersions(DEAD_REDIS, heartbeat=False)  # built by the user: not checked
    try:
        with pytest.raises(ConfigurationError, match="require_versions=False"):
            QueryCache(regions={"default": memory_region()}, versions=store)
    finally:
        store.close()


def test_require_versions_false_starts_without_redis(sqlite_engine: Any) -> None:
    """Reads go to the database; a commit waits at most the lease, then proceeds."""
    cache = QueryCache(regions={"default": memory_region()}, versions=DEAD_REDIS,
                       require_versions=False, lease=0.3)  # fmt: skip
    try:
        maker = sessionmaker(sqlite_engine)
        cache.install(maker)
        stmt = select(Product.name).where(Product.id <= 3).order_by(Product.id).options(FromCache())
        with maker() as s:
            assert s.scalars(stmt).all() == ["Product 01", "Product 02", "Product 03"]
        t0 = time.monotonic()
        with maker() as s:
            s.get(Product, 1).name = "renamed"
            s.commit()
        assert time.monotonic() - t0 < 3.0
        assert cache.stats()["default"]["hits"] == 0
    finally:
        cache.close()


def test_a_reachable_redis_store_is_accepted(redis_url: str) -> None:
    cache = QueryCache(regions={"default": memory_region()}, versions=redis_url)
    try:
        assert len(_heartbeats()) >= 1
    finally:
        cache.close()


# ------------------------------------------------------ RedisVersions itself

STORE_BAD: dict[str, list[Any]] = {
    "lease": [*bad_seconds(maximum=3600.0), 0.0001],
    "in_flight_ttl": [*bad_seconds(maximum=86400.0), 0.0001],
    "cooldown": bad_seconds(maximum=3600.0),
    "timeout": bad_seconds(maximum=60.0),
    "heartbeat": BAD_FLAGS,
    "require": BAD_FLAGS,
}
STORE_CASES = [(a, v) for a, vs in STORE_BAD.items() for v in vs]


@pytest.mark.parametrize("case", STORE_CASES, ids=[_id(c) for c in STORE_CASES])
def test_redis_store_arguments(case: Any, redis_url: str) -> None:
    arg, value = case
    before = set(_heartbeats())
    with pytest.raises(ConfigurationError, match=arg):
        RedisVersions(redis_url, **{arg: value})
    assert set(_heartbeats()) <= before, "a heartbeat thread was started"


@pytest.mark.parametrize("client", ["redis://:bad", "redis://h:99999999/0", object(), 1])
def test_redis_store_clients(client: Any) -> None:
    with pytest.raises(ConfigurationError):
        RedisVersions(client, heartbeat=False)
