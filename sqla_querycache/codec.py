"""Plain values <-> bytes: type-tagged msgpack that never runs code to decode.

Cache entries may live in a shared Redis that anyone with write access can
overwrite, so decoding must be safe: msgpack with a closed set of extension
types (no pickle, no imports chosen by the payload). Everything that does
not round-trip exactly raises :class:`Unencodable`, and the caller then
simply does not store the entry.
"""

from __future__ import annotations

import datetime as _dt
import enum
import struct
import threading
import uuid as _uuid
import zoneinfo
from decimal import Decimal
from typing import Any

import msgpack

#: bump when the entry layout changes; old entries then decode as misses
FORMAT_VERSION = 5  # 5: an 8th item, [statement fingerprint, parameter reprs]

_DECIMAL, _DATETIME, _DATE, _TIME, _TIMEDELTA, _UUID, _TUPLE, _BIGINT, _ENUM = range(1, 10)
_DECIMAL_BIN = 10

#: Enum classes an entry may name, by qualified name: only classes the mapped
#: schema or a statement's column types declare (never imported by name)
_enums: dict[str, type[enum.Enum]] = {}


def register_enum(cls: type[enum.Enum]) -> None:
    """Allow members of ``cls`` in entries (called for the Enum types of mapped columns)."""
    _enums[f"{cls.__module__}.{cls.__qualname__}"] = cls


def register_enums_of(types: Any) -> None:
    for t in types:
        cls = getattr(t, "enum_class", None)
        if isinstance(cls, type) and issubclass(cls, enum.Enum):
            register_enum(cls)


_packb = msgpack.Packer(use_bin_type=True, datetime=False).pack


class Unencodable(Exception):
    """A value has no exact, safe encoding; the entry is not stored."""


class CorruptEntry(Exception):
    """Bytes that are not a valid entry of this format; counted as a miss."""


def _tz_out(tz: _dt.tzinfo | None, ref: Any) -> Any:
    if tz is None:
        return None
    if isinstance(tz, zoneinfo.ZoneInfo):
        if not tz.key:  # ZoneInfo.from_file(): nothing to rebuild it from
            raise Unencodable("a ZoneInfo without a key has no exact encoding")
        return tz.key
    if tz is _dt.timezone.utc:
        return 0
    offset = tz.utcoffset(ref if isinstance(ref, _dt.datetime) else None)
    if type(tz) is _dt.timezone and offset is not None:
        out: list[Any] = [offset.days * 86400 + offset.seconds, offset.microseconds]
        name = tz.tzname(None)
        if name != _dt.timezone(offset).tzname(None):
            out.append(name)  # timezone(offset, "CET") keeps its name
        return out
    raise Unencodable(f"tzinfo {tz!r} has no exact encoding")


def _tz_in(raw: Any) -> _dt.tzinfo | None:
    if raw is None:
        return None
    if raw == 0:
        return _dt.timezone.utc
    if isinstance(raw, str):
        return zoneinfo.ZoneInfo(raw)  # reads the tz database; runs no payload code
    offset = _dt.timedelta(seconds=raw[0], microseconds=raw[1])
    return _dt.timezone(offset, raw[2]) if len(raw) > 2 else _dt.timezone(offset)


# fixed-size binary layouts: dates and times are the most common tagged values,
# so they avoid a nested msgpack document (and its Python round trip) each
_DATETIME_S = struct.Struct(">hBBBBBIB")  # year, month, day, h, m, s, us, fold
_DATE_S = struct.Struct(">hBB")
_TIME_S = struct.Struct(">BBBIB")  # h, m, s, us, fold
_DELTA_S = struct.Struct(">iiI")  # days, seconds, microseconds
_OFFSET_S = struct.Struct(">iI")  # seconds, microseconds


def _tz_bytes(tz: _dt.tzinfo | None, ref: Any) -> bytes:
    """b"" naive, 0 UTC, 1 fixed offset (+ name), 2 zone key."""
    raw = _tz_out(tz, ref)
    if raw is None:
        return b""
    if raw == 0:
        return b"\x00"
    if isinstance(raw, str):
        return b"\x02" + raw.encode()
    out = b"\x01" + _OFFSET_S.pack(raw[0], raw[1])
    return out + raw[2].encode() if len(raw) > 2 else out


def _tz_from(data: bytes) -> _dt.tzinfo | None:
    if not data:
        return None
    kind = data[0]
    if kind == 0:
        return _dt.timezone.utc
    if kind == 2:
        return _tz_in(data[1:].decode())
    if kind == 1:
        seconds, micros = _OFFSET_S.unpack_from(data, 1)
        name = data[1 + _OFFSET_S.size :]
        return _tz_in([seconds, micros, name.decode()] if name else [seconds, micros])
    raise CorruptEntry(f"unknown tzinfo tag {kind}")


#: drivers whose own uuid.UUID subclass is encoded as a UUID (a hit returns uuid.UUID:
#: equal, same hash and str; only type() differs)
_UUID_MODULES = frozenset({"asyncpg.pgproto.pgproto"})


#: an ExtType built without its constructor's argument checks (ours are always
#: an int code and bytes): ``_ext((code, data))``, ~0.4 us less per tagged value
_ExtType = msgpack.ExtType


def _ext(code_and_data: tuple[int, bytes]) -> msgpack.ExtType:
    return tuple.__new__(_ExtType, code_and_data)


#: 10 ** n for the exponents a binary Decimal can have
_POW10 = [10**n for n in range(129)]


def _decimal_out(value: Decimal) -> msgpack.ExtType:
    """A finite Decimal as (exponent byte, signed big-endian coefficient); else its text.

    ``Decimal("1.20")`` is b"\\xfe\\x78": 2 bytes instead of 4 of text, and
    exact (coefficient digits and exponent, so the scale survives).
    """
    sign, digits, exponent = value.as_tuple()
    if type(exponent) is int and -128 <= exponent <= 127 and len(digits) <= 38:
        # value == coefficient * 10**exponent exactly, and n/d is value reduced:
        # integer arithmetic gives the coefficient (no digit string, no context)
        n, d = value.as_integer_ratio()
        coefficient = n * _POW10[-exponent] // d if exponent < 0 else n // _POW10[exponent]
        if sign and coefficient == 0:  # -0 keeps its sign only as text
            return _ext((_DECIMAL, str(value).encode()))
        size = (coefficient.bit_length() + 8) // 8
        return _ext((_DECIMAL_BIN, exponent.to_bytes(1, "big", signed=True)
                     + coefficient.to_bytes(size, "big", signed=True)))  # fmt: skip
    return _ext((_DECIMAL, str(value).encode()))


def _default(obj: Any) -> msgpack.ExtType:
    t = type(obj)
    if t is Decimal:
        return _decimal_out(obj)
    if t is _dt.datetime:
        head = _DATETIME_S.pack(obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second,
                                obj.microsecond, obj.fold)  # fmt: skip
        return _ext((_DATETIME, head + _tz_bytes(obj.tzinfo, obj)))
    if t is _dt.date:
        return _ext((_DATE, _DATE_S.pack(obj.year, obj.month, obj.day)))
    if t is _dt.time:
        head = _TIME_S.pack(obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold)
        return msgpack.ExtType(_TIME, head + _tz_bytes(obj.tzinfo, None))
    if t is _dt.timedelta:
        return msgpack.ExtType(_TIMEDELTA, _DELTA_S.pack(obj.days, obj.seconds, obj.microseconds))
    if t is _uuid.UUID or (isinstance(obj, _uuid.UUID) and t.__module__ in _UUID_MODULES):
        return msgpack.ExtType(_UUID, obj.bytes)
    if t is tuple:
        level = getattr(_depth, "level", 0)
        if level >= MAX_EXT_DEPTH - 1:
            raise Unencodable("tuples nested too deeply")
        _depth.level = level + 1
        try:
            return msgpack.ExtType(_TUPLE, _packb_strict(list(obj)))
        finally:
            _depth.level = level
    if t is int:  # outside msgpack's 64-bit range
        return msgpack.ExtType(_BIGINT, str(obj).encode())
    if isinstance(obj, enum.Enum):
        name = f"{t.__module__}.{t.__qualname__}"
        if _enums.get(name) is t:
            return msgpack.ExtType(_ENUM, _packb([name, obj.name]))
    raise Unencodable(f"no safe encoding for {t.__module__}.{t.__qualname__}")


#: how deep extension payloads may nest (a tuple in a tuple ...): each level
#: re-enters msgpack's C unpacker, so a crafted entry must not recurse freely
MAX_EXT_DEPTH = 16
_depth = threading.local()


def _ext_hook(code: int, data: bytes) -> Any:
    level = getattr(_depth, "level", 0)
    if level >= MAX_EXT_DEPTH:
        raise CorruptEntry("extension types nested too deeply")
    _depth.level = level + 1
    try:
        return _decode_ext(code, data)
    finally:
        _depth.level = level


def _decode_ext(code: int, data: bytes) -> Any:
    if code == _DECIMAL_BIN:
        if len(data) < 2:
            raise CorruptEntry("truncated decimal")
        exponent = int.from_bytes(data[:1], "big", signed=True)
        coefficient = int.from_bytes(data[1:], "big", signed=True)
        return Decimal(f"{coefficient}E{exponent}")
    if code == _DECIMAL:
        return Decimal(data.decode())
    if code == _DATETIME:
        y, mo, d, h, mi, s, us, fold = _DATETIME_S.unpack_from(data)
        tz = _tz_from(data[_DATETIME_S.size :])
        return _dt.datetime(y, mo, d, h, mi, s, us, tzinfo=tz, fold=fold)
    if code == _DATE:
        return _dt.date(*_DATE_S.unpack(data))
    if code == _TIME:
        h, mi, s, us, fold = _TIME_S.unpack_from(data)
        return _dt.time(h, mi, s, us, tzinfo=_tz_from(data[_TIME_S.size :]), fold=fold)
    if code == _TIMEDELTA:
        return _dt.timedelta(*_DELTA_S.unpack(data))
    if code == _UUID:
        return _uuid.UUID(bytes=data)
    if code == _TUPLE:
        return tuple(unpackb(data))
    if code == _BIGINT:
        return int(data.decode())
    if code == _ENUM:
        name, member = unpackb(data)
        cls = _enums.get(name)
        if cls is None or member not in cls.__members__:
            raise CorruptEntry(f"entry names an unknown enum {name}.{member}")
        return cls[member]
    raise CorruptEntry(f"unknown extension type {code}")


def _packb_strict(obj: Any) -> bytes:
    # strict_types: a subclass (an IntEnum, a str subclass) goes through
    # _default and is refused there instead of silently losing its type
    out: bytes = msgpack.packb(
        obj, default=_default, use_bin_type=True, strict_types=True, datetime=False
    )
    return out


def _default_key(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):  # keys are hashed, never decoded: any Enum will do
        t = type(obj)
        return msgpack.ExtType(_ENUM, _packb([f"{t.__module__}.{t.__qualname__}", obj.name]))
    return _default(obj)


def packb_key(obj: Any) -> bytes:
    """Encode values for hashing into a key (Enum members of any class allowed)."""
    try:
        out: bytes = msgpack.packb(obj, default=_default_key, use_bin_type=True,
                                   strict_types=True, datetime=False)  # fmt: skip
        return out
    except Unencodable:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        raise Unencodable(str(err)) from err


def packb(obj: Any) -> bytes:
    """Encode plain values; raise :class:`Unencodable` if any has no exact encoding."""
    try:
        return _packb_strict(obj)
    except Unencodable:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        raise Unencodable(str(err)) from err


def unpackb(data: bytes) -> Any:
    """Decode bytes made by :func:`packb`; raise :class:`CorruptEntry` on anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptEntry(f"entry is {type(data).__name__}, not bytes")
    try:
        value = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                                use_list=True)  # fmt: skip
    except CorruptEntry:
        raise
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise CorruptEntry(f"{type(err).__name__}: {err}") from err
    return value
