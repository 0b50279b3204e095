"""Signed and encrypted entries (``QueryCache(secret=..., encrypt=...)``).

Whoever can write to the backend must not be able to put rows in front of the
application: a forged entry, an entry moved under another key, an altered
byte or an entry written without the secret is a ``corrupt`` miss; the query
runs and returns the database's rows. Each attack is also run against a
cache *without* a secret where that shows a wrong result, so the tests fail
if the signature were not checked. Memory and real Redis regions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from sqla_querycache import ConfigurationError, FromCache, LocalVersions, QueryCache, codec
from sqla_querycache.sealing import ENCRYPTED, SIGNED, TAG_SIZE

from .conftest import StatementCounter, memory_region, redis_region
from .models import Product

OLD = b"old secret, 32 bytes of it......"
NEW = "a newer secret given as a str: fine too"
PLAINTEXT = b"Product 14 special"  # the name of a row in category 3


def by_category(cat: int) -> Any:
    # ``category_id + 0``: not a bound foreign key, so the entries of every
    # category depend on the same names (whole tables, not rows.py's per-value
    # names): a moved entry is then only told apart by its signature
    return select(Product).where(Product.category_id + 0 == cat).order_by(Product.id)


@pytest.fixture(params=["memory", "redis"])
def kind(request: Any) -> str:
    return request.param


@pytest.fixture()
def setup(kind: str, request: Any, sqlite_engine: Any) -> Iterator[Any]:
    """make(**kw) -> (cache, sessionmaker); caches made by one test share a region and versions."""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        request.getfixturevalue("redis_client")  # flushed
        region = redis_region(url)
    else:
        region = memory_region()
    versions = LocalVersions()  # shared: an entry one cache stores is current for the others
    made: list[QueryCache] = []
    counter = StatementCounter(sqlite_engine)

    def make(**kw: Any) -> tuple[QueryCache, Any]:
        kw.setdefault("memo_size", 0)  # every lookup reads the stored bytes
        cache = QueryCache(regions={"default": region}, versions=versions, **kw)
        maker = sessionmaker(sqlite_engine)
        cache.install(maker)
        made.append(cache)
        return cache, maker

    make.sql = counter  # type: ignore[attr-defined]
    make.engine = sqlite_engine  # type: ignore[attr-defined]
    yield make
    counter.close()
    for cache in made:
        cache.close()


def names(maker: Any, stmt: Any, cached: bool = True) -> list[str]:
    with maker() as s:
        if cached:
            stmt = stmt.options(FromCache())
        return [p.name for p in s.scalars(stmt)]


def uncached(setup: Any, stmt: Any) -> list[str]:
    return names(sessionmaker(setup.engine), stmt, cached=False)


def stored(cache: QueryCache) -> dict[str, bytes]:
    """Every entry key -> its stored bytes, read from the backend."""
    store = cache.regions["default"]
    if store.redis is not None:
        keys = [k.decode() for k in store.redis.scan_iter(match="qc:q:*")]
    else:
        keys = list(store.backend._cache)
    return {k: store.get(k) for k in keys}


def only_key(cache: QueryCache) -> str:
    (key,) = stored(cache)
    return key


def put(cache: QueryCache, key: str, raw: bytes) -> None:
    cache.regions["default"].set(key, raw, None)


def ran(setup: Any, fn: Any) -> tuple[Any, int]:
    """(what fn returned, SQL statements it sent)."""
    mark = setup.sql.count
    out = fn()
    return out, setup.sql.since(mark)


# ----------------------------------------------------------------- hits


@pytest.mark.parametrize("encrypt", [False, True], ids=["signed", "encrypted"])
def test_hit_with_a_secret(setup: Any, encrypt: bool) -> None:
    cache, maker = setup(secret=OLD, encrypt=encrypt, memo_size=1000)
    expected = uncached(setup, by_category(3))
    assert names(maker, by_category(3)) == expected  # miss, stored
    raw = stored(cache)[only_key(cache)]
    assert raw[:2] == (ENCRYPTED if encrypt else SIGNED)
    got, sql = ran(setup, lambda: names(maker, by_category(3)))
    assert (got, sql) == (expected, 0)
    # a second cache (empty memo) reads the stored bytes: a hit
    other, maker2 = setup(secret=OLD, encrypt=encrypt)
    got, sql = ran(setup, lambda: names(maker2, by_category(3)))
    assert (got, sql) == (expected, 0)
    s = other.stats()["default"]
    assert (s["hits"], s["corrupt"]) == (1, 0)


# ------------------------------------------------------------ tampering


def _flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("encrypt", [False, True], ids=["signed", "encrypted"])
def test_any_flipped_bit_is_a_corrupt_miss(setup: Any, encrypt: bool) -> None:
    cache, maker = setup(secret=OLD, encrypt=encrypt)
    expected = uncached(setup, by_category(3))
    names(maker, by_category(3))
    key = only_key(cache)
    good = stored(cache)[key]
    n = len(good)
    # the header, the tag / nonce, the first and last bytes of the body, and its middle
    for at in sorted({0, 1, 2, 2 + TAG_SIZE - 1, 2 + TAG_SIZE, n // 2, n - 1}):
        put(cache, key, _flip(good, at))
        before = cache.stats()["default"]
        got, sql = ran(setup, lambda: names(maker, by_category(3)))
        after = cache.stats()["default"]
        assert got == expected, at
        assert sql == 1, f"byte {at}: the query did not run"
        assert after["corrupt"] - before["corrupt"] == 1, at
        assert after["hits"] == before["hits"], at
        assert after["stores"] - before["stores"] == 1, at  # a good entry stored again
        assert stored(cache)[key] != _flip(good, at)
    got, sql = ran(setup, lambda: names(maker, by_category(3)))
    assert (got, sql) == (expected, 0)


def _rename_in_entry(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) == 1
    return raw.replace(old, new)


def test_a_changed_value_is_served_without_a_secret(setup: Any) -> None:
    """The control: without a secret, an edited value (same length) is served as is."""
    cache, maker = setup()
    names(maker, by_category(3))
    key = only_key(cache)
    put(cache, key, _rename_in_entry(stored(cache)[key], PLAINTEXT, b"Product 14 SPECIAL"))
    got, sql = ran(setup, lambda: names(maker, by_category(3)))
    assert sql == 0 and "Product 14 SPECIAL" in got  # the attack works without a secret


def test_a_changed_value_is_refused_with_a_secret(setup: Any) -> None:
    cache, maker = setup(secret=OLD)
    expected = uncached(setup, by_category(3))
    names(maker, by_category(3))
    key = only_key(cache)
    put(cache, key, _rename_in_entry(stored(cache)[key], PLAINTEXT, b"Product 14 SPECIAL"))
    got, sql = ran(setup, lambda: names(maker, by_category(3)))
    assert (got, sql) == (expected, 1)
    assert cache.stats()["default"]["corrupt"] == 1


def _moved(raw: bytes, from_key: str, to_key: str, header: int) -> bytes:
    """An entry rewritten to claim another key (its inner key field changed), tag kept."""
    entry = codec.unpackb(raw[header:])
    assert entry[1] == from_key
    entry[1] = to_key
    return raw[:header] + codec.packb(entry)


@pytest.mark.parametrize("secret", [None, OLD], ids=["no-secret", "secret"])
def test_an_entry_moved_to_another_key(setup: Any, secret: Any) -> None:
    """A's entry put under B's key, its key field rewritten: B's query must not get A's rows."""
    cache, maker = setup(secret=secret)
    names(maker, by_category(2))
    (key_a,) = stored(cache)
    names(maker, by_category(3))
    (key_b,) = set(stored(cache)) - {key_a}
    raw_a = stored(cache)[key_a]
    header = 0 if secret is None else 2 + TAG_SIZE
    put(cache, key_b, _moved(raw_a, key_a, key_b, header))
    got, sql = ran(setup, lambda: names(maker, by_category(3)))
    if secret is None:  # the control: unsigned, the replay is served
        assert sql == 0 and got == uncached(setup, by_category(2))
    else:
        assert (got, sql) == (uncached(setup, by_category(3)), 1)
        assert cache.stats()["default"]["corrupt"] == 1


@pytest.mark.parametrize("encrypt", [False, True], ids=["signed", "encrypted"])
def test_an_entry_copied_verbatim_to_another_key(setup: Any, encrypt: bool) -> None:
    cache, maker = setup(secret=OLD, encrypt=encrypt)
    names(maker, by_category(2))
    (key_a,) = stored(cache)
    names(maker, by_category(3))
    (key_b,) = set(stored(cache)) - {key_a}
    put(cache, key_b, stored(cache)[key_a])
    got, sql = ran(setup, lambda: names(maker, by_category(3)))
    assert (got, sql) == (uncached(setup, by_category(3)), 1)
    assert cache.stats()["default"]["corrupt"] == 1


def test_a_forged_entry_with_a_guessed_tag(setup: Any) -> None:
    """A well-formed entry made by someone without the secret (any tag): refused."""
    cache, maker = setup(secret=OLD)
    names(maker, by_category(3))
    key = only_key(cache)
    inner = stored(cache)[key][2 + TAG_SIZE :]
    forged = _rename_in_entry(inner, PLAINTEXT, b"Product 14 SPECIAL")
    for tag in (b"\0" * TAG_SIZE, stored(cache)[key][2 : 2 + TAG_SIZE]):
        put(cache, key, SIGNED + tag + forged)
        got, sql = ran(setup, lambda: names(maker, by_category(3)))
        assert (got, sql) == (uncached(setup, by_category(3)), 1)


# ------------------------------------------------- with and without a secret


@pytest.mark.parametrize("encrypt", [False, True], ids=["signed", "encrypted"])
def test_entries_of_a_cache_without_the_secret(setup: Any, encrypt: bool) -> None:
    plain, plain_maker = setup()
    sealed, sealed_maker = setup(secret=OLD, encrypt=encrypt)
    expected = uncached(setup, by_category(3))
    names(plain_maker, by_category(3))  # an unsigned entry
    got, sql = ran(setup, lambda: names(sealed_maker, by_category(3)))
    assert (got, sql) == (expected, 1)
    assert sealed.stats()["default"]["corrupt"] == 1
    # it stored a sealed entry over it; the cache without the secret refuses that one
    got, sql = ran(setup, lambda: names(plain_maker, by_category(3)))
    assert (got, sql) == (expected, 1)
    assert plain.stats()["default"]["corrupt"] == 1


# -------------------------------------------------------------- rotation


@pytest.mark.parametrize("encrypt", [False, True], ids=["signed", "encrypted"])
def test_rotation(setup: Any, encrypt: bool) -> None:
    old, old_maker = setup(secret=OLD, encrypt=encrypt)
    both, both_maker = setup(secret=[NEW, OLD], encrypt=encrypt)
    new, new_maker = setup(secret=NEW, encrypt=encrypt)
    expected2, expected3 = uncached(setup, by_category(2)), uncached(setup, by_category(3))

    names(old_maker, by_category(2))  # sealed with OLD
    assert ran(setup, lambda: names(both_maker, by_category(2))) == (expected2, 0)  # accepted
    assert ran(setup, lambda: names(new_maker, by_category(2))) == (expected2, 1)  # refused
    assert new.stats()["default"]["corrupt"] == 1

    names(both_maker, by_category(3))  # sealed with the first secret, NEW
    assert ran(setup, lambda: names(new_maker, by_category(3))) == (expected3, 0)
    assert ran(setup, lambda: names(old_maker, by_category(3))) == (expected3, 1)
    assert old.stats()["default"]["corrupt"] == 1
    assert both.stats()["default"]["corrupt"] == 0


# ------------------------------------------------------------ encryption


def test_encrypted_entries_hold_no_plaintext(setup: Any) -> None:
    signed, signed_maker = setup(secret=OLD, namespace="qc")
    names(signed_maker, by_category(3))
    assert PLAINTEXT in stored(signed)[only_key(signed)]  # the control: signing hides nothing
    signed.regions["default"].delete(only_key(signed))

    enc, enc_maker = setup(secret=OLD, encrypt=True)
    expected = uncached(setup, by_category(3))
    assert names(enc_maker, by_category(3)) == expected
    raw = stored(enc)[only_key(enc)]
    assert raw[:2] == ENCRYPTED
    for text in (PLAINTEXT, b"Product 03", b"about product", b"Product"):
        assert text not in raw, text
    assert ran(setup, lambda: names(enc_maker, by_category(3))) == (expected, 0)


def test_two_encryptions_of_one_entry_differ(setup: Any) -> None:
    """A fresh nonce per entry: equal rows never give equal bytes."""
    enc, maker = setup(secret=OLD, encrypt=True)
    names(maker, by_category(3))
    key = only_key(enc)
    first = stored(enc)[key]
    enc.regions["default"].delete(key)
    names(maker, by_category(3))
    second = stored(enc)[key]
    assert first[:2] == second[:2] == ENCRYPTED and first[2:14] != second[2:14]


def test_encrypt_without_cryptography_is_a_configuration_error(monkeypatch: Any) -> None:
    # the package made unimportable for this test only (None in sys.modules: ImportError)
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigurationError, match=r"sqla_querycache\[encrypt\]"):
        QueryCache(regions={"default": memory_region()}, secret=OLD, encrypt=True)
    QueryCache(regions={"default": memory_region()}, secret=OLD)  # signing needs nothing


def test_the_entries_command_opens_sealed_entries(setup: Any) -> None:
    from sqla_querycache import commands

    cache, maker = setup(secret=OLD, encrypt=True)
    names(maker, by_category(3))
    key = only_key(cache)
    (row,) = commands.entries(cache)
    assert row["valid"] is True and row["rows"] == len(uncached(setup, by_category(3)))
    put(cache, key, _flip(stored(cache)[key], 20))
    (row,) = commands.entries(cache)
    assert row["valid"].startswith("corrupt")


@pytest.mark.parametrize("encrypt", [False, True], ids=["signed", "encrypted"])
def test_entry_and_versions_in_one_redis_round_trip(
    redis_url: str, redis_client: Any, sqlite_engine: Any, encrypt: bool
) -> None:
    """Redis region + Redis versions on one server: the entry comes back from the
    versions script (``read_with_entry``), and is opened all the same."""
    cache = QueryCache(regions={"default": redis_region(redis_url)}, versions=redis_url,
                       memo_size=0, secret=OLD, encrypt=encrypt)  # fmt: skip
    counter = StatementCounter(sqlite_engine)
    try:
        maker = sessionmaker(sqlite_engine)
        cache.install(maker)
        expected = names(maker, by_category(3))
        assert cache.regions["default"].combined is True
        mark = counter.count
        assert names(maker, by_category(3)) == expected and counter.since(mark) == 0
        key = only_key(cache)
        put(cache, key, _flip(stored(cache)[key], len(stored(cache)[key]) // 2))
        mark = counter.count
        assert names(maker, by_category(3)) == expected and counter.since(mark) == 1
        s = cache.stats()["default"]
        assert (s["hits"], s["corrupt"]) == (1, 1)
    finally:
        counter.close()
        cache.close()
