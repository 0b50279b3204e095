"""I6 and fail-open: what Redis holds is never trusted, a broken cache never breaks a query.

Entries are written by the extension, then overwritten in Redis with a live
pickle payload, garbage, or well-formed msgpack of the wrong shape; every
query must then return exactly its uncached result, raise nothing, count
the entry as ``corrupt``, and store a good entry again.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from dogpile.cache import make_region
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from sqla_querycache import (
    ConfigurationError,
    FromCache,
    QueryCache,
    QueryCacheError,
    UnknownRegionError,
    codec,
)

from .conftest import memory_region, redis_region
from .models import Category, Customer, Product, Tag
from .test_keys import execute

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "qc:q:"


def queries() -> dict[str, Any]:
    """Result shapes of every kind; "entity" and "columns" read the same tables."""
    return {
        "entity": select(Product).where(Product.category_id == 2).order_by(Product.id),
        "columns": select(Product.id, Product.name, Product.attrs)
        .where(Product.id <= 5)
        .order_by(Product.id),
        "eager": select(Customer)
        .where(Customer.id <= 2)
        .options(selectinload(Customer.orders))
        .order_by(Customer.id),
        "mixed": select(Product, Category.name)
        .join(Product.category)
        .where(Product.id <= 4)
        .order_by(Product.id),
    }


def _close(qc: QueryCache) -> None:
    qc.uninstall()
    close = getattr(qc.versions, "close", None)
    if close is not None:
        close()


@pytest.fixture(params=["local_versions", "redis_versions"])
def redis_cache(request, redis_url, redis_client) -> Iterator[QueryCache]:
    """A QueryCache whose only region is on the test Redis (versions local or in Redis too).

    ``memo_size=0``: every lookup reads (and decodes) what is in Redis, which
    is what these tests overwrite.
    """
    versions = redis_url if request.param == "redis_versions" else "local"
    qc = QueryCache(regions={"default": redis_region(redis_url)}, versions=versions, memo_size=0)
    qc.install(Session)
    yield qc
    _close(qc)


def entry_keys(client: Any) -> list[bytes]:
    return sorted(client.keys(PREFIX + "*"))


def populate(engine: Any, sql: Any, qc: QueryCache, client: Any, names: list[str]) -> dict:
    """Run each query until it is a hit; return query name -> its Redis key."""
    found: dict[str, bytes] = {}
    for name in names:
        before = set(entry_keys(client))
        first, _ = execute(engine, sql, queries()[name], True)
        added = set(entry_keys(client)) - before
        assert len(added) == 1, f"{name}: expected one new entry, got {added}"
        found[name] = added.pop()
        rows, n = execute(engine, sql, queries()[name], True)
        assert n == 0 and rows == first, f"{name}: no hit before poisoning, the test can't fail"
    assert qc.stats()["default"]["corrupt"] == 0
    return found


def assert_every_query_recovers(
    engine: Any, sql: Any, qc: QueryCache, names: list[str], corrupt_expected: bool = True
) -> None:
    """Each query: right rows, SQL sent, counted; then its good entry is stored again."""
    for name in names:
        stmt = queries()[name]
        expected, _ = execute(engine, sql, stmt, False)
        corrupt = qc.stats()["default"]["corrupt"]
        rows, n = execute(engine, sql, stmt, True)
        assert rows == expected, f"{name}: wrong rows after the entry was overwritten"
        assert n > 0, f"{name}: served from the overwritten entry"
        if corrupt_expected:
            assert qc.stats()["default"]["corrupt"] > corrupt, f"{name}: not counted as corrupt"
        again, n = execute(engine, sql, stmt, True)
        assert n == 0 and again == expected, f"{name}: no good entry stored after the miss"


# ------------------------------------------------------------ (a) pickle


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> Any:
        return (os.system, (self.command,))


DOGPILE_HEADER = b'{"ct": 1700000000.0, "v": 2}|'  # dogpile's metadata, then the payload


def pickled(command: str, protocol: int = pickle.DEFAULT_PROTOCOL, layout: str = "raw") -> bytes:
    data = pickle.dumps(RunsCode(command), protocol=protocol)
    return DOGPILE_HEADER + data if layout == "dogpile" else data


def test_the_pickle_payload_is_live(tmp_path, redis_url, redis_client):
    """Control: these payloads do run code when unpickled, e.g. by dogpile's own get()."""
    marker = tmp_path / "unpickled"
    pickle.loads(pickled(f"touch {marker}"))
    assert marker.exists()
    marker.unlink()
    region = redis_region(redis_url)  # dogpile's default serializer is pickle
    redis_client.set("control", pickled(f"touch {marker}", layout="dogpile"))
    region.get("control")
    assert marker.exists(), "dogpile's own get() unpickles what Redis holds"


@pytest.mark.parametrize("layout", ["raw", "dogpile"])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_payload_in_redis_never_runs(engine, sql, redis_cache, redis_client, tmp_path,
                                            protocol, layout):  # fmt: skip
    names = list(queries())
    keys = populate(engine, sql, redis_cache, redis_client, names)
    marker = tmp_path / f"pwned-{os.getpid()}-{protocol}-{layout}"
    payload = pickled(f"touch {marker}", protocol, layout)
    for key in entry_keys(redis_client):
        redis_client.set(key, payload, keepttl=True)
    assert set(entry_keys(redis_client)) == set(keys.values())
    assert_every_query_recovers(engine, sql, redis_cache, names)
    assert not marker.exists(), "a cache entry was unpickled"


def test_pickle_inside_a_well_formed_entry_never_runs(engine, sql, redis_cache, redis_client,
                                                      tmp_path):  # fmt: skip
    names = list(queries())
    populate(engine, sql, redis_cache, redis_client, names)
    marker = tmp_path / "pwned-inside"
    payload = pickled(f"touch {marker}")
    for key in entry_keys(redis_client):
        entry = codec.unpackb(redis_client.get(key))
        entry[PAYLOAD] = payload  # the rows
        redis_client.set(key, codec.packb(entry), keepttl=True)
    assert_every_query_recovers(engine, sql, redis_cache, names)
    assert not marker.exists()


def test_config_dict_region_never_unpickles(redis_url, redis_client, tmp_path):
    """A region given as a config dict gets the safe serializer, also for direct dogpile use."""
    qc = QueryCache(regions={"default": {"backend": "dogpile.cache.redis",
                                         "arguments": {"url": redis_url}}})  # fmt: skip
    marker = tmp_path / "pwned-dict-region"
    redis_client.set("direct", pickled(f"touch {marker}", layout="dogpile"))
    with pytest.raises(codec.CorruptEntry):
        qc.regions["default"].region.get("direct")
    assert not marker.exists()
    qc.regions["default"].region.set("plain", {"a": (1, 2)})  # and it still works
    assert qc.regions["default"].region.get("plain") == {"a": (1, 2)}


# ------------------------------------------------------------ (b) garbage


def _garbage(kind: str, good: bytes, rng: random.Random) -> bytes:
    if kind == "random":
        return rng.randbytes(rng.randint(1, 300))
    if kind == "empty":
        return b""
    if kind == "never_used_byte":
        return b"\xc1"
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "trailing_byte":
        return good + b"\x00"
    if kind == "bit_flips":
        data = bytearray(good)
        for _ in range(8):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "text":
        return b"hello, this is not an entry"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["random", "empty", "never_used_byte", "truncated", "trailing_byte", "text", "bit_flips"],
)
def test_garbage_in_redis_is_a_counted_miss(engine, sql, redis_cache, redis_client, kind):
    names = list(queries())
    populate(engine, sql, redis_cache, redis_client, names)
    rng = random.Random(f"garbage-{kind}")
    for key in entry_keys(redis_client):
        redis_client.set(key, _garbage(kind, redis_client.get(key), rng), keepttl=True)
    # a bit flip may land in a value (a wrong but well-formed entry, undetectable
    # without a checksum) and so is not required to be counted; everything else is
    if kind == "bit_flips":
        for name in names:
            execute(engine, sql, queries()[name], True)  # no exception
        return
    assert_every_query_recovers(engine, sql, redis_cache, names)


# ------------------------------------------------------- (c) wrong shape

# an entry: [format, created, table names, versions, shape flags, payload]
# payload:  [layouts, entities, kinds, scalar, rows]
# entity:   [layout index, identity, identity token, *column values, *relationship refs]

Mutate = Callable[[list, dict], Any]


def _payload(fn: Callable[[list], Any]) -> Mutate:
    def mutate(entry: list, others: dict) -> Any:
        fn(entry[PAYLOAD])
        return entry

    return mutate


def _rows(fn: Callable[[list, bool, list], None]) -> Mutate:
    return _payload(lambda p: fn(p[4], p[3], p[2]))


def _bad_refs(rows: list, scalar: bool, kinds: list) -> None:
    for i, row in enumerate(rows):
        if scalar:
            rows[i] = 10_000
        else:
            for j, is_entity in enumerate(kinds):
                if is_entity:
                    row[j] = 10_000


def _drop_last_of_rows(rows: list, scalar: bool, kinds: list) -> None:
    assert not scalar
    for row in rows:
        row.pop()


def _flip_kinds(p: list) -> None:
    # an entity result claiming to be plain values: rows of entity numbers
    assert p[3] is True
    p[2] = [False]
    p[3] = False
    p[4] = [[r] for r in p[4]]


def _truncate_records(p: list) -> None:
    for record in p[1]:
        del record[-1]


def _tamper_then_fail(p: list) -> None:
    # values a writer to Redis chose, then a reference that makes hydration fail
    layout_cols = {i: lay[1] for i, lay in enumerate(p[0])}
    for record in p[1]:
        cols = layout_cols[record[0]]
        if "name" in cols:
            record[3 + cols.index("name")] = "TAMPERED"
    _bad_refs(p[4], p[3], p[2])


def _bad_rel_refs(p: list) -> None:
    for record, lay_index in ((r, r[0]) for r in p[1]):
        lay = p[0][lay_index]
        if lay[2]:
            record[3 + len(lay[1])] = [10_000]


def _other_statement(entry: list, others: dict) -> Any:
    return others["swap"]


def _set(index: int, value: Any) -> Mutate:
    def mutate(entry: list, others: dict) -> Any:
        entry[index] = value
        return entry

    return mutate


def _bump_format(entry: list, others: dict) -> Any:
    entry[0] += 1
    return entry


def _fewer_versions(entry: list, others: dict) -> Any:
    entry[VERSIONS] = entry[VERSIONS][:-2]
    return entry


def _unknown_class(p: list) -> None:
    for lay in p[0]:
        lay[0] = "nowhere.Nothing"


def _unknown_column(p: list) -> None:
    for lay in p[0]:
        lay[1] = [*lay[1], "no_such_column"]


def _flip_scalar(p: list) -> None:
    p[3] = not p[3]


# positions in an entry: [format, key, created, names, versions, flags, payload, statement]
NAMES, VERSIONS, PAYLOAD = 3, 4, 6

ALL = ["entity", "columns", "eager", "mixed"]
ENTITIES = ["entity", "eager", "mixed"]


WRONG_SHAPES = [
    ("a_map", lambda e, o: {"a": 1}, ALL),
    ("an_int", lambda e, o: 42, ALL),
    ("nil", lambda e, o: None, ALL),
    ("short_list", lambda e, o: [1, 2, 3], ALL),
    ("other_format_version", _bump_format, ALL),
    ("fewer_versions_than_names", _fewer_versions, ALL),
    ("payload_not_a_list", _set(PAYLOAD, "payload"), ALL),
    ("payload_too_short", _payload(lambda p: p.pop()), ALL),
    ("unknown_class", _payload(_unknown_class), ENTITIES),
    ("unknown_column", _payload(_unknown_column), ENTITIES),
    ("row_refers_to_missing_entity", _rows(_bad_refs), ENTITIES),
    ("relationship_refers_to_missing_entity", _payload(_bad_rel_refs), ["eager"]),
    ("scalar_flag_flipped", _payload(_flip_scalar), ["entity", "eager"]),
    ("tampered_objects_left_behind", _payload(_tamper_then_fail), ENTITIES),
    ("entity_record_missing_values", _payload(_truncate_records), ENTITIES),
    ("rows_of_wrong_arity", _rows(_drop_last_of_rows), ["columns", "mixed"]),
    ("entity_result_as_plain_values", _payload(_flip_kinds), ["entity"]),
    ("entry_of_another_statement", _other_statement, ["entity", "columns"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "label, mutate, names",
    WRONG_SHAPES,
    ids=[c[0] if isinstance(c, tuple) else c.id for c in WRONG_SHAPES],
)
def test_wrong_shape_entry_is_a_counted_miss(engine, sql, redis_cache, redis_client, label,
                                             mutate, names):  # fmt: skip
    keys = populate(engine, sql, redis_cache, redis_client, names)
    entries = {name: codec.unpackb(redis_client.get(key)) for name, key in keys.items()}
    for name, key in keys.items():
        others = {"swap": next((entries[n] for n in names if n != name), None)}
        new = mutate(codec.unpackb(redis_client.get(key)), others)
        redis_client.set(key, codec.packb(new), keepttl=True)
    assert_every_query_recovers(engine, sql, redis_cache, names)


def test_one_corrupt_entry_read_once_counts_once(engine, sql, redis_cache, redis_client):
    populate(engine, sql, redis_cache, redis_client, ["entity"])
    (key,) = entry_keys(redis_client)
    redis_client.set(key, b"\xc1", keepttl=True)
    before = redis_cache.stats()["default"]
    execute(engine, sql, queries()["entity"], True)
    after = redis_cache.stats()["default"]
    assert after["misses"] - before["misses"] == 1
    assert after["corrupt"] - before["corrupt"] == 1


def test_stale_entry_is_a_miss_not_corrupt(engine, sql, redis_cache, redis_client):
    """Control for the counter: an entry with old versions is a plain miss."""
    names = ["entity", "columns"]
    keys = populate(engine, sql, redis_cache, redis_client, names)
    for key in keys.values():
        entry = codec.unpackb(redis_client.get(key))
        entry[VERSIONS] = [v - 1 for v in entry[VERSIONS]]
        redis_client.set(key, codec.packb(entry), keepttl=True)
    assert_every_query_recovers(engine, sql, redis_cache, names, corrupt_expected=False)
    assert redis_cache.stats()["default"]["corrupt"] == 0


CRASH_CHILD = """
import sys
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqla_querycache import FromCache, QueryCache
from tests.conftest import redis_region
from tests.models import Tag

engine = create_engine(sys.argv[1])
with engine.connect():
    pass
QueryCache(regions={"default": redis_region(sys.argv[2])}).install(Session)
with Session(engine) as s:
    rows = s.execute(select(Tag.id, Tag.label).where(Tag.id <= 3).options(FromCache())).all()
print(sorted(tuple(r) for r in rows))
"""


def test_deep_tuple_entry_does_not_crash_the_reader(engine, sql, redis_url, redis_client):
    db_url = engine.url.render_as_string(hide_password=False)

    def child() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", CRASH_CHILD, db_url, redis_url], cwd=ROOT, check=False,
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip

    first = child()  # stores the entry under the same key this process would use
    assert first.returncode == 0, first.stderr[-2000:]
    (key,) = entry_keys(redis_client)
    bomb = b"\x00"
    for _ in range(300):
        bomb = msgpack.packb(msgpack.ExtType(7, b"\x91" + bomb))  # 7: codec's tuple type
    redis_client.set(key, bomb)
    second = child()
    assert second.returncode == 0, f"the reader died: rc={second.returncode}"
    assert second.stdout == first.stdout


# --------------------------------------------------------- unreachable Redis


def _closed_port_region() -> Any:
    return redis_region(
        "redis://127.0.0.1:1/0",
        socket_timeout=0.5,
        connection_kwargs={"socket_connect_timeout": 0.5},
    )


@pytest.mark.parametrize("how", ["region_object", "config_dict"])
def test_unreachable_redis_region_fails_open(engine, sql, how):
    region: Any = _closed_port_region()
    if how == "config_dict":
        region = {
            "backend": "dogpile.cache.redis",
            "arguments": {"url": "redis://127.0.0.1:1/0", "socket_timeout": 0.5,
                          "connection_kwargs": {"socket_connect_timeout": 0.5}},
        }  # fmt: skip
    qc = QueryCache(regions={"default": region}).install(Session)
    try:
        for name in ("entity", "eager", "columns"):
            stmt = queries()[name]
            expected, _ = execute(engine, sql, stmt, False)
            for _ in range(2):
                started = time.monotonic()
                rows, n = execute(engine, sql, stmt, True)
                assert time.monotonic() - started < 10
                assert rows == expected and n > 0
        stats = qc.stats()["default"]
        assert stats["errors"] >= 6, stats
        assert stats["hits"] == 0 and stats["stores"] == 0
    finally:
        _close(qc)


def test_unreachable_version_store_fails_open(engine, sql):
    qc = QueryCache(regions={"default": memory_region()}, versions="redis://127.0.0.1:1/0",
                    require_versions=False)  # fmt: skip
    qc.install(Session)
    try:
        stmt = queries()["entity"]
        expected, _ = execute(engine, sql, stmt, False)
        for _ in range(2):
            rows, n = execute(engine, sql, stmt, True)
            assert rows == expected and n > 0
        assert qc.stats()["default"]["hits"] == 0
        assert qc.stats()["default"]["errors"] >= 2
    finally:
        _close(qc)


# ------------------------------------------------------------- entry size


def test_entries_larger_than_max_entry_bytes_are_not_stored(engine, sql, redis_url, redis_client):
    small = select(Tag.id, Tag.label).where(Tag.id <= 2).order_by(Tag.id)
    big = select(Product).order_by(Product.id)

    def cache(limit: int | None) -> QueryCache:
        kw = {} if limit is None else {"max_entry_bytes": limit}
        # shared versions: every instance writes entries of the same size
        qc = QueryCache(regions={"default": redis_region(redis_url)}, versions=redis_url, **kw)
        return qc.install(Session)

    sizes = {}
    qc = cache(None)
    try:
        for name, stmt in (("small", small), ("big", big)):
            before = set(entry_keys(redis_client))
            execute(engine, sql, stmt, True)
            (key,) = set(entry_keys(redis_client)) - before
            sizes[name] = redis_client.strlen(key)
    finally:
        _close(qc)
    assert sizes["small"] < sizes["big"]

    def check(limit: int, stored: dict[str, bool]) -> None:
        for key in entry_keys(redis_client):
            redis_client.delete(key)
        qc = cache(limit)
        try:
            for name, stmt in (("small", small), ("big", big)):
                expected, _ = execute(engine, sql, stmt, False)
                first, n1 = execute(engine, sql, stmt, True)
                second, n2 = execute(engine, sql, stmt, True)
                assert first == second == expected
                assert n1 > 0 and (n2 == 0) is stored[name], (name, limit, sizes)
            too_large = qc.stats()["default"]["too_large"]
            assert too_large == 2 * sum(not s for s in stored.values())
            assert len(entry_keys(redis_client)) == sum(stored.values())
        finally:
            _close(qc)

    check(sizes["small"], {"small": True, "big": False})  # the limit is inclusive
    check(sizes["small"] - 1, {"small": False, "big": False})
    check(sizes["big"], {"small": True, "big": True})


# ------------------------------------------------------ regions as dicts


def test_config_dict_regions_work(engine, sql, redis_url, redis_client):
    qc = QueryCache(
        regions={
            "default": {"backend": "dogpile.cache.memory"},
            "shared": {"backend": "dogpile.cache.redis", "expiration_time": 60,
                       "arguments": {"url": redis_url}},
        }
    ).install(Session)  # fmt: skip
    stmt = select(Customer).where(Customer.id <= 2).options(selectinload(Customer.orders))

    def run(region: str | None) -> tuple[list[Any], int]:
        mark = sql.count
        with Session(engine) as s:
            st = stmt.options(FromCache(region)) if region else stmt
            rows = [(c.id, [o.id for o in c.orders]) for c in s.scalars(st)]
        return rows, sql.since(mark)

    try:
        expected, _ = run(None)
        assert expected and all(orders for _, orders in expected)
        for region in ("default", "shared"):
            first, n1 = run(region)
            second, n2 = run(region)
            assert first == second == expected
            assert n1 > 0 and n2 == 0, region
            assert qc.stats()[region]["hits"] == 1 and qc.stats()[region]["stores"] == 1
        assert len(entry_keys(redis_client)) == 1  # only the "shared" region is in Redis
    finally:
        _close(qc)


# --------------------------------------------------------- configuration


def _region() -> Any:
    return memory_region()


BAD_CACHES: dict[str, Callable[[], Any]] = {
    "empty_regions": lambda: QueryCache(regions={}),
    "regions_not_a_mapping": lambda: QueryCache(regions=[("default", _region())]),
    "regions_none": lambda: QueryCache(regions=None),
    "region_not_a_region": lambda: QueryCache(regions={"default": object()}),
    "region_a_string": lambda: QueryCache(regions={"default": "dogpile.cache.memory"}),
    "region_not_configured": lambda: QueryCache(regions={"default": make_region()}),
    "region_dict_without_backend": lambda: QueryCache(regions={"default": {"arguments": {}}}),
    "region_dict_unknown_backend": lambda: QueryCache(
        regions={"default": {"backend": "no.such.backend"}}
    ),
    "region_name_empty": lambda: QueryCache(regions={"": _region()}),
    "region_name_not_str": lambda: QueryCache(regions={1: _region()}),
    "max_entry_bytes_negative": lambda: QueryCache(regions={"d": _region()}, max_entry_bytes=-1),
    "max_entry_bytes_zero": lambda: QueryCache(regions={"d": _region()}, max_entry_bytes=0),
    "max_entry_bytes_bool": lambda: QueryCache(regions={"d": _region()}, max_entry_bytes=True),
    "max_entry_bytes_float": lambda: QueryCache(regions={"d": _region()}, max_entry_bytes=1.5),
    "namespace_empty": lambda: QueryCache(regions={"d": _region()}, namespace=""),
    "namespace_with_colon": lambda: QueryCache(regions={"d": _region()}, namespace="a:b"),
    "lock_timeout_negative": lambda: QueryCache(regions={"d": _region()}, lock_timeout=-1),
    "versions_unknown": lambda: QueryCache(regions={"d": _region()}, versions=object()),
    "versions_unknown_word": lambda: QueryCache(regions={"d": _region()}, versions="memcached"),
    "from_cache_empty_region": lambda: FromCache(""),
    "from_cache_region_none": lambda: FromCache(None),  # type: ignore[arg-type]
    "from_cache_negative_ttl": lambda: FromCache(expiration_time=-1),
    "from_cache_zero_ttl": lambda: FromCache(expiration_time=0),
    "from_cache_bool_ttl": lambda: FromCache(expiration_time=True),
    "from_cache_str_ttl": lambda: FromCache(expiration_time="5"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("make", list(BAD_CACHES.values()), ids=list(BAD_CACHES))
def test_bad_configuration_is_a_typed_error(make):
    with pytest.raises(ConfigurationError) as info:
        make()
    assert isinstance(info.value, QueryCacheError) and isinstance(info.value, ValueError)
    assert str(info.value)


def test_install_twice_and_install_on_nonsense_are_typed_errors(engine, sql):
    qc = QueryCache(regions={"default": memory_region()})
    with pytest.raises(ConfigurationError):
        qc.install(object())
    with pytest.raises(ConfigurationError):
        qc.install(Session())  # an instance, not the class
    qc.install(Session)  # the failed attempts left nothing half-installed
    try:
        with pytest.raises(ConfigurationError):
            qc.install(Session)
        with pytest.raises(ConfigurationError):
            qc.install(sessionmaker())
        stmt = select(Tag.label).where(Tag.id == 1)
        execute(engine, sql, stmt, True)
        assert execute(engine, sql, stmt, True)[1] == 0  # installed exactly once, working
        assert qc.stats()["default"]["hits"] == 1
    finally:
        qc.uninstall()
    assert execute(engine, sql, select(Tag.label).where(Tag.id == 1), True)[1] == 1
    qc.install(Session)  # uninstall() allows a new install()
    qc.uninstall()


def test_manual_invalidation_errors_are_typed():
    qc = QueryCache(regions={"default": memory_region()})
    with pytest.raises(ConfigurationError):
        qc.invalidate()
    with pytest.raises(ConfigurationError):
        qc.invalidate(object())
    with pytest.raises(UnknownRegionError):
        qc.invalidate_region("nope")


def test_entry_depending_on_an_unread_table_is_never_trusted(engine, sql, redis_cache,
                                                             redis_client):  # fmt: skip
    """An entry recorded with a table this process's lookups do not read (another process
    learned more, or a forgery) is a miss, and the lookups then read that table too."""
    keys = populate(engine, sql, redis_cache, redis_client, ["entity"])
    key = keys["entity"]
    entry = codec.unpackb(redis_client.get(key))
    entry[NAMES] = [*entry[NAMES], "other_table"]
    entry[VERSIONS] = [*entry[VERSIONS], 12345]
    redis_client.set(key, codec.packb(entry), keepttl=True)
    rows, n = execute(engine, sql, queries()["entity"], True)
    assert n > 0, "served an entry whose dependency was not checked"
    (plan,) = [p for p in redis_cache._reader._plans._data.values() if "product" in p.tables]
    assert "other_table" in plan.tables  # learned: read from now on
    stored = codec.unpackb(redis_client.get(key))  # the miss stored a real entry over it
    assert 12345 not in stored[VERSIONS]
    again, n = execute(engine, sql, queries()["entity"], True)
    assert n == 0 and again == rows  # and it is a hit from now on
    assert redis_cache.stats()["default"]["corrupt"] == 0
