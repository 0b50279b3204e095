"""The entry codec: exact round trips, refusals, and safe decoding of bytes it never made."""

from __future__ import annotations

import datetime as dt
import enum
import math
import os
import random
import subprocess
import sys
import textwrap
import uuid
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqla_querycache import codec

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ exactness


def _same_tz(a: Any, b: Any, ref: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if type(a) is not type(b):
        return False
    if isinstance(a, zoneinfo.ZoneInfo):
        return a.key == b.key
    return a.utcoffset(ref) == b.utcoffset(ref) and a.tzname(ref) == b.tzname(ref)


def same(a: Any, b: Any) -> bool:
    """Equal in type and value, recursively; NaN equals NaN, -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple() and a.is_snan() == b.is_snan()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if isinstance(a, dt.datetime):
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.fold == b.fold
            and _same_tz(a.tzinfo, b.tzinfo, a.replace(tzinfo=None))
        )
    if isinstance(a, dt.time):
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.fold == b.fold
            and _same_tz(a.tzinfo, b.tzinfo, None)
        )
    return bool(a == b)


def roundtrip(value: Any) -> Any:
    data = codec.packb(value)
    assert isinstance(data, bytes)
    return codec.unpackb(data)


def assert_exact(value: Any) -> None:
    back = roundtrip(value)
    assert same(value, back), f"{value!r} came back as {back!r}"


def test_the_comparator_sees_what_it_must():
    # the oracle itself: a loose comparison would make every test below vacuous
    assert not same(1, True) and not same(1, 1.0) and not same((1,), [1])
    assert not same(Decimal("1.10"), Decimal("1.1")) and not same(0.0, -0.0)
    assert not same(dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    assert not same({"a": 1, "b": 2}, {"b": 2, "a": 1})
    cet = dt.timezone(dt.timedelta(hours=1), "CET")
    assert not same(dt.datetime(2024, 1, 1, tzinfo=cet),
                    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))))  # fmt: skip
    assert same(float("nan"), float("nan")) and same(Decimal("NaN"), Decimal("NaN"))


# ------------------------------------------------------------ supported types

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
MINUS_0345 = dt.timezone(-dt.timedelta(hours=3, minutes=45))
ODD_OFFSET = dt.timezone(dt.timedelta(seconds=3723, microseconds=17))

EXACT_VALUES = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "one": 1,
    "minus_one": -1,
    "int64_max": 2**63 - 1,
    "int64_min": -(2**63),
    "uint64_max": 2**64 - 1,
    "beyond_uint64": 2**64,
    "below_int64": -(2**63) - 1,
    "huge_int": 3**200,
    "huge_negative_int": -(7**150),
    "float": 1.5,
    "float_third": 1 / 3,
    "float_tiny": 5e-324,
    "neg_zero": -0.0,
    "nan": float("nan"),
    "inf": float("inf"),
    "neg_inf": float("-inf"),
    "empty_str": "",
    "unicode": "h\u00e9llo w\u00f6rld \u2603 \U0001f600 \u4e2d\u6587 \u0000 nul",
    "empty_bytes": b"",
    "bytes": bytes(range(256)),
    "decimal_scale2": Decimal("1.10"),
    "decimal_scale0": Decimal(10),
    "decimal_neg_zero": Decimal("-0.00"),
    "decimal_exponent": Decimal("1.2E+5"),
    "decimal_tiny": Decimal("-1E-30"),
    "decimal_long": Decimal("12345678901234567890.123456789012345678901234567890"),
    "decimal_nan": Decimal("NaN"),
    "decimal_snan": Decimal("sNaN"),
    "decimal_inf": Decimal("-Infinity"),
    "datetime_naive": dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
    "datetime_min": dt.datetime.min,
    "datetime_max": dt.datetime.max,
    "datetime_utc": dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.timezone.utc),
    "datetime_plus_0530": dt.datetime(2024, 1, 1, 12, 0, 1, 5, tzinfo=PLUS_0530),
    "datetime_minus_0345": dt.datetime(1999, 12, 31, 23, 0, tzinfo=MINUS_0345),
    "datetime_odd_offset": dt.datetime(2024, 6, 1, tzinfo=ODD_OFFSET),
    "datetime_zoneinfo": dt.datetime(2024, 7, 1, 8, 30, tzinfo=PARIS),
    "datetime_zoneinfo_fold0": dt.datetime(2024, 10, 27, 2, 30, fold=0, tzinfo=PARIS),
    "datetime_zoneinfo_fold1": dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),
    "datetime_naive_fold1": dt.datetime(2024, 10, 27, 2, 30, fold=1),
    "date": dt.date(2024, 2, 29),
    "date_min": dt.date.min,
    "time_naive": dt.time(23, 59, 59, 999999),
    "time_fold": dt.time(1, 30, fold=1),
    "time_utc": dt.time(12, 0, tzinfo=dt.timezone.utc),
    "time_offset": dt.time(12, 0, 30, 7, tzinfo=MINUS_0345),
    "time_zoneinfo": dt.time(8, 0, tzinfo=PARIS),
    "timedelta": dt.timedelta(days=-3, seconds=5, microseconds=7),
    "timedelta_max": dt.timedelta.max,
    "timedelta_zero": dt.timedelta(0),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "uuid_nil": uuid.UUID(int=0),
    "uuid4": uuid.uuid4(),
    "empty_tuple": (),
    "tuple": (1, "a", None, Decimal("2.50")),
    "nested_tuples": ((1, (2, (3,))), [(), [()]]),
    "empty_list": [],
    "empty_dict": {},
    "json_like": {
        "color": "red",
        "sizes": [1, 2, 3.5],
        "nested": {"a": [None, True, {"b": []}], "c": {}},
        "": "empty key",
    },
    "dict_key_order": {"z": 1, "a": 2, "m": 3},
    "dict_non_str_keys": {1: "int", b"b": "bytes", (1, "t"): "tuple", None: "none"},
    "row_of_everything": (
        7,
        "name",
        Decimal("9.99"),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
        uuid.UUID(int=7),
        {"k": [1, 2]},
        None,
        b"\x00",
        True,
        dt.date(2024, 1, 2),
    ),
}


@pytest.mark.parametrize("value", list(EXACT_VALUES.values()), ids=list(EXACT_VALUES))
def test_exact_round_trip(value):
    assert_exact(value)


def test_bool_and_int_stay_apart_inside_containers():
    back = roundtrip([True, 1, False, 0, (True, 1), {"b": True, "i": 1}])
    assert [type(v) for v in back[:4]] == [bool, int, bool, int]
    assert [type(v) for v in back[4]] == [bool, int]
    assert type(back[5]["b"]) is bool and type(back[5]["i"]) is int


def test_tuple_and_list_stay_apart():
    back = roundtrip([(1, [2, (3,)]), [1, (2,)]])
    assert type(back[0]) is tuple and type(back[0][1]) is list and type(back[0][1][1]) is tuple
    assert type(back[1]) is list and type(back[1][1]) is tuple


def test_aware_datetime_keeps_its_instant_and_its_zone():
    value = dt.datetime(2024, 3, 31, 1, 59, 59, tzinfo=PARIS)
    back = roundtrip(value)
    assert back == value and back.utcoffset() == value.utcoffset()
    assert back.tzinfo.key == "Europe/Paris"
    later = roundtrip(value + dt.timedelta(seconds=1))  # DST starts at 02:00 in Paris
    assert later.utcoffset() == dt.timedelta(hours=1)


def test_named_fixed_offset_without_exact_encoding_is_refused_or_kept():
    # a fixed offset with a name ("CET") must not come back as "UTC+01:00"
    value = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET"))
    try:
        back = roundtrip(value)
    except codec.Unencodable:
        return
    assert same(value, back), f"{value.tzname()!r} came back as {back.tzname()!r}"


def test_zoneinfo_without_key_is_refused_or_kept():
    # ZoneInfo.from_file() has key None: encoding the key alone loses the zone
    path = Path("/usr/share/zoneinfo/Europe/Paris")
    if not path.exists():
        pytest.skip("no system tz database")
    with path.open("rb") as f:
        tz = zoneinfo.ZoneInfo.from_file(f)
    value = dt.datetime(2024, 7, 1, 12, tzinfo=tz)
    try:
        back = roundtrip(value)
    except codec.Unencodable:
        return
    assert back.tzinfo is not None, "an aware datetime came back naive"
    assert back == value and back.utcoffset() == value.utcoffset()


# --------------------------------------------------------------- refusals


class Color(enum.IntEnum):
    red = 1


class Mood(enum.Enum):
    happy = "happy"


class Name(str):
    pass


class Count(int):
    pass


class Money(Decimal):
    pass


class Payload:
    def __init__(self) -> None:
        self.x = 1


class Local(dt.tzinfo):
    def utcoffset(self, d: Any) -> dt.timedelta:
        return dt.timedelta(hours=2)

    def dst(self, d: Any) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, d: Any) -> str:
        return "LOCAL"


class Stamp(dt.datetime):
    pass


def _self_containing_list() -> list[Any]:
    lst: list[Any] = []
    lst.append(lst)
    return lst


UNENCODABLE = {
    "int_enum": Color.red,
    "enum": Mood.happy,
    "str_subclass": Name("x"),
    "int_subclass": Count(3),
    "decimal_subclass": Money("1.5"),
    "datetime_subclass": Stamp(2024, 1, 1),
    "custom_object": Payload(),
    "set": {1, 2},
    "frozenset": frozenset({1}),
    "ordered_dict": __import__("collections").OrderedDict(a=1),
    "complex": 1j,
    "type": Payload,
    "function": len,
    "custom_tzinfo": dt.datetime(2024, 1, 1, tzinfo=Local()),
    "custom_tzinfo_time": dt.time(1, tzinfo=Local()),
    "nested_in_list": [1, [2, {"k": Color.red}]],
    "nested_in_tuple": (1, (2, Payload())),
    "nested_dict_key": {Name("k"): 1},
    "surrogate_str": "\ud800",
    "int_too_long_for_str": 10**5000,
    "self_containing": _self_containing_list(),
    "bytearray": pytest.param(
        bytearray(b"ab"),
        marks=pytest.mark.xfail(strict=True, reason="codec packs bytearray as bin, decodes bytes"),
    ),
    "memoryview": pytest.param(
        memoryview(b"ab"),
        marks=pytest.mark.xfail(strict=True, reason="codec packs memoryview as bin, decodes bytes"),
    ),
}


@pytest.mark.parametrize("value", list(UNENCODABLE.values()), ids=list(UNENCODABLE))
def test_value_without_exact_encoding_is_refused(value):
    with pytest.raises(codec.Unencodable):
        codec.packb(value)


# --------------------------------------------------------- decoding garbage


def test_garbage_bytes_are_corrupt():
    rng = random.Random(20240601)
    blobs = [b"", b"\xc1", b"\x91", b"\xdc\xff\xff", b"\x93\x01\x02"]
    blobs += [rng.randbytes(rng.randint(1, 64)) for _ in range(500)]
    good = codec.packb([1, 2.5, "three", (4,), {"five": Decimal("5.00")}])
    blobs += [good[:n] for n in range(len(good))]  # every truncation
    blobs += [good + b"\x00", good + good]  # trailing data
    corrupt = 0
    for blob in blobs:
        try:
            codec.unpackb(blob)
        except codec.CorruptEntry:
            corrupt += 1
        # any other exception type fails the test here
    # the hand-made ones and every truncation are certainly corrupt
    assert corrupt >= 5 + len(good) + 2


@pytest.mark.parametrize("blob", ["not bytes", None, 12, ["list"]])
def test_non_bytes_input_is_corrupt(blob):
    with pytest.raises(codec.CorruptEntry):
        codec.unpackb(blob)


_KNOWN = range(1, 11)  # the codec's own extension codes


def _ext(code: int, data: bytes) -> bytes:
    """An ext-type msgpack item of any code, including the reserved negative ones."""
    return b"\xc7" + bytes([len(data), code & 0xFF]) + data


@pytest.mark.parametrize(
    "code",
    [
        c if c != -1 else pytest.param(
            -1, marks=pytest.mark.xfail(
                strict=True,
                reason="codec.unpackb returns msgpack.Timestamp for ext -1 (msgpack built-in)",
            ),
        )
        for c in range(-128, 128)
        if c not in _KNOWN
    ],
)  # fmt: skip
def test_unknown_extension_code_is_corrupt(code):
    for data in (b"\x00\x00\x00\x01", b"\x00" * 8, b"x"):
        with pytest.raises(codec.CorruptEntry):
            codec.unpackb(_ext(code, data))


def _known(code: int, payload: Any) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, msgpack.packb(payload)))


BAD_KNOWN_EXT = {
    "decimal_not_utf8": msgpack.packb(msgpack.ExtType(codec._DECIMAL, b"\xff\xfe")),
    "decimal_not_a_number": msgpack.packb(msgpack.ExtType(codec._DECIMAL, b"one")),
    "datetime_short": _known(codec._DATETIME, [2024, 1, 1]),
    "datetime_month_13": _known(codec._DATETIME, [2024, 13, 1, 0, 0, 0, 0, 0, None]),
    "datetime_fold_2": _known(codec._DATETIME, [2024, 1, 1, 0, 0, 0, 0, 2, None]),
    "datetime_tz_relative_path": _known(
        codec._DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, "../../../etc/passwd"]
    ),
    "datetime_tz_absolute_path": _known(
        codec._DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, "/etc/passwd"]
    ),
    "datetime_tz_unknown_key": _known(codec._DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, "No/Where"]),
    "datetime_tz_offset_too_big": _known(codec._DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, [90000, 0]]),
    "datetime_tz_wrong_arity": _known(codec._DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0, [1]]),
    "datetime_not_msgpack": msgpack.packb(msgpack.ExtType(codec._DATETIME, b"\xc1")),
    "date_day_0": _known(codec._DATE, [2024, 1, 0]),
    "date_strings": _known(codec._DATE, ["2024", "1", "1"]),
    "time_hour_25": _known(codec._TIME, [25, 0, 0, 0, 0, None]),
    "timedelta_overflow": _known(codec._TIMEDELTA, [10**10, 0, 0]),
    "uuid_15_bytes": msgpack.packb(msgpack.ExtType(codec._UUID, b"\x00" * 15)),
    "tuple_not_msgpack": msgpack.packb(msgpack.ExtType(codec._TUPLE, b"\xc1")),
    "tuple_of_map_ok_but_trailing": msgpack.packb(msgpack.ExtType(codec._TUPLE, b"\x90\x90")),
    "bigint_not_digits": msgpack.packb(msgpack.ExtType(codec._BIGINT, b"12ab")),
    "bigint_float": msgpack.packb(msgpack.ExtType(codec._BIGINT, b"1e5")),
    "nested_bad_inside_list": msgpack.packb([1, msgpack.ExtType(codec._UUID, b"\x00"), 3]),
    "nested_unknown_inside_tuple": msgpack.packb(
        msgpack.ExtType(codec._TUPLE, msgpack.packb([msgpack.ExtType(42, b"")]))
    ),
}


@pytest.mark.parametrize("blob", list(BAD_KNOWN_EXT.values()), ids=list(BAD_KNOWN_EXT))
def test_malformed_known_extension_is_corrupt(blob):
    with pytest.raises(codec.CorruptEntry):
        codec.unpackb(blob)


def test_deep_list_nesting_is_corrupt_not_a_crash():
    blob = b"\x91" * 100_000 + b"\x00"  # [[[...[0]...]]]
    with pytest.raises(codec.CorruptEntry):
        codec.unpackb(blob)
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(codec.Unencodable):
        codec.packb(deep)


def _in_child(code: str) -> subprocess.CompletedProcess[str]:
    """Run codec code in a fresh interpreter: a crash must not take pytest down."""
    prelude = "import msgpack\nfrom sqla_querycache import codec\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_deeply_nested_tuple_entry_is_corrupt_not_a_crash():
    # under 1 KB of bytes; each tuple level re-enters msgpack's C unpacker
    proc = _in_child("""
        blob = b"\\x00"
        for _ in range(300):
            blob = msgpack.packb(msgpack.ExtType(codec._TUPLE, b"\\x91" + blob))
        assert len(blob) < 2000
        try:
            codec.unpackb(blob)
            print("decoded")
        except codec.CorruptEntry:
            print("corrupt")
    """)
    assert proc.returncode == 0, f"decoder crashed: rc={proc.returncode} {proc.stderr[-300:]}"
    assert proc.stdout.strip() in ("decoded", "corrupt")


@pytest.mark.parametrize(
    "depth",
    [
        pytest.param(300),
        pytest.param(1000),
    ],
)  # fmt: skip
def test_deeply_nested_tuple_value_round_trips_or_is_refused(depth):
    proc = _in_child(f"""
        value = 0
        for _ in range({depth}):
            value = (value,)
        try:
            blob = codec.packb(value)
        except codec.Unencodable:
            print("refused")
        else:
            print("same" if codec.unpackb(blob) == value else "different")
    """)
    assert proc.returncode == 0, f"codec crashed: rc={proc.returncode} {proc.stderr[-300:]}"
    assert proc.stdout.strip() in ("same", "refused")


def test_decoding_never_unpickles():
    import pickle

    class Boom:
        def __reduce__(self) -> Any:
            return (pytest.fail, ("pickle payload executed",))

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        blob = pickle.dumps(Boom(), protocol=protocol)
        try:
            codec.unpackb(blob)
        except codec.CorruptEntry:
            pass
        # the payload inside a well-formed entry is only bytes
        assert roundtrip([blob]) == [blob]


# ---------------------------------------------------------------- properties

_keys = st.one_of(
    st.text(max_size=8), st.integers(-(2**70), 2**70), st.binary(max_size=8), st.none(),
)  # fmt: skip
_tzs = st.one_of(
    st.none(),
    st.just(dt.timezone.utc),
    st.builds(
        lambda m: dt.timezone(dt.timedelta(minutes=m)), st.integers(-23 * 60 - 59, 23 * 60 + 59)
    ),
    st.timezone_keys(allow_prefix=False).map(zoneinfo.ZoneInfo),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=_tzs, allow_imaginary=True),
    st.dates(),
    st.times(timezones=_tzs),
    st.timedeltas(),
    st.uuids(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(_keys, inner, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_property_round_trip_is_exact(value):
    assert_exact(value)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_property_arbitrary_bytes_decode_or_are_corrupt(blob):
    try:
        value = codec.unpackb(blob)
    except codec.CorruptEntry:
        return
    # whatever decodes is made only of the types the codec produces (msgpack's own
    # Timestamp, ext -1, is the known exception: test_unknown_extension_code_is_corrupt[-1])
    allowed = (type(None), bool, int, float, str, bytes, list, tuple, dict, Decimal, dt.datetime,
               dt.date, dt.time, dt.timedelta, uuid.UUID, msgpack.Timestamp)  # fmt: skip

    def check(v: Any) -> None:
        assert type(v) in allowed, f"decoded a foreign {type(v)!r}"
        if isinstance(v, (list, tuple)):
            for item in v:
                check(item)
        elif isinstance(v, dict):
            for k, item in v.items():
                check(k)
                check(item)

    check(value)


@settings(max_examples=600, deadline=None)
@given(st.integers(0, 1), st.integers(0, 10**38 - 1), st.integers(-140, 140))
def test_property_decimals_of_any_scale_round_trip_exactly(sign, coefficient, exponent):
    """Every finite Decimal the binary form can hold (and those just outside it)
    comes back with the same sign, digits and exponent: its coefficient is exact
    integer arithmetic, whatever the decimal context's precision."""
    value = Decimal((sign, tuple(int(c) for c in str(coefficient)), exponent))
    assert_exact(value)
    if -128 <= exponent <= 127 and not (sign and coefficient == 0):
        assert codec._decimal_out(value).code == codec._DECIMAL_BIN
