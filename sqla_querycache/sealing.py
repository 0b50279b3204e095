"""Signed, and optionally encrypted, cache entries (``QueryCache(secret=...)``).

Whoever can write to the cache backend can otherwise put any rows in front of
the application. With a secret every stored entry carries a keyed MAC
(BLAKE2b, 32 bytes) over the entry's own cache key and its bytes, so an entry
that was forged, copied under another key (replayed) or altered by one bit
is refused: counted as ``corrupt``, the query runs, the user gets the
database's rows. With ``encrypt=True`` the entry is encrypted with AES-256-GCM
instead (the ``cryptography`` package); GCM's tag authenticates it, with the
cache key as associated data, so the same guarantees hold and the backend
holds no readable row.

Layout (the first byte, ``0xc1``, is the one byte msgpack never uses: a cache
without the secret reads a sealed entry as corrupt, never as rows, and a
sealing cache refuses a plain one)::

    signed:     c1 'S' | tag (32) | entry
    encrypted:  c1 'E' | nonce (12) | AES-GCM(entry) with its tag (16)

Keys: every secret (>= 16 bytes of key material; a ``str`` counts its UTF-8
bytes) yields two independent 32-byte keys, one to sign and one to encrypt
(BLAKE2b of the secret with different personalisations). ``secret=[new,
old, ...]`` rotates: entries are sealed with the first and accepted under
any; drop the old secret once entries sealed with it expired.
Encryption draws a random 96-bit nonce per entry: fine for up to ~2**32
stored entries per secret; rotate long before.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import Any

from .codec import CorruptEntry
from .exc import ConfigurationError

#: bytes of key material a secret must have at least
MIN_SECRET_BYTES = 16
TAG_SIZE = 32
NONCE_SIZE = 12
SIGNED = b"\xc1S"
ENCRYPTED = b"\xc1E"


class Plain:
    """No secret: entries are stored as they are."""

    sealed = False
    encrypted = False

    def seal(self, key: str, blob: bytes) -> bytes:
        return blob

    def open(self, key: str, raw: bytes) -> bytes:
        return raw

    def __repr__(self) -> str:
        return "plain"


PLAIN = Plain()


def _derive(material: bytes, purpose: bytes) -> bytes:
    return hashlib.blake2b(material, digest_size=32, person=b"sqla_qc." + purpose).digest()


def _bound(key: str) -> bytes:
    """The cache key, length-prefixed: what the MAC binds an entry to."""
    k = key.encode()
    return len(k).to_bytes(4, "big") + k


class Signed:
    """Entries signed with a keyed BLAKE2b; any of the secrets verifies."""

    sealed = True
    encrypted = False

    def __init__(self, materials: Sequence[bytes]):
        self._keys = [_derive(m, b"sign") for m in materials]

    def _tag(self, mac_key: bytes, key: str, blob: bytes) -> bytes:
        h = hashlib.blake2b(SIGNED, digest_size=TAG_SIZE, key=mac_key)
        h.update(_bound(key))
        h.update(blob)
        return h.digest()

    def seal(self, key: str, blob: bytes) -> bytes:
        return SIGNED + self._tag(self._keys[0], key, blob) + blob

    def open(self, key: str, raw: bytes) -> bytes:
        if not isinstance(raw, (bytes, bytearray)) or raw[:2] != SIGNED:
            raise CorruptEntry("not a signed entry")
        raw = bytes(raw)
        tag, blob = raw[2 : 2 + TAG_SIZE], raw[2 + TAG_SIZE :]
        for mac_key in self._keys:
            if hmac.compare_digest(tag, self._tag(mac_key, key, blob)):
                return blob
        raise CorruptEntry("entry signature does not match (forged, altered or moved)")

    def __repr__(self) -> str:
        return f"signed ({len(self._keys)} secret{'s' if len(self._keys) > 1 else ''})"


class Encrypted:
    """Entries encrypted with AES-256-GCM, the cache key as associated data."""

    sealed = True
    encrypted = True

    def __init__(self, materials: Sequence[bytes]):
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as err:
            raise ConfigurationError(
                "encrypt=True needs the 'cryptography' package: "
                "pip install 'sqla_querycache[encrypt]' (or pass encrypt=False: entries "
                "are then signed, not encrypted)"
            ) from err
        from cryptography.exceptions import InvalidTag

        self._invalid = InvalidTag
        self._ciphers = [AESGCM(_derive(m, b"encrypt")) for m in materials]

    def seal(self, key: str, blob: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return ENCRYPTED + nonce + self._ciphers[0].encrypt(nonce, blob, ENCRYPTED + _bound(key))

    def open(self, key: str, raw: bytes) -> bytes:
        if not isinstance(raw, (bytes, bytearray)) or raw[:2] != ENCRYPTED:
            raise CorruptEntry("not an encrypted entry")
        raw = bytes(raw)
        nonce, body = raw[2 : 2 + NONCE_SIZE], raw[2 + NONCE_SIZE :]
        aad = ENCRYPTED + _bound(key)
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, body, aad)
            except self._invalid:
                continue
        raise CorruptEntry("entry does not decrypt (forged, altered or moved)")

    def __repr__(self) -> str:
        n = len(self._ciphers)
        return f"encrypted AES-256-GCM ({n} secret{'s' if n > 1 else ''})"


def _material(given: Any, where: str) -> bytes:
    if isinstance(given, str):
        value = given.encode()
    elif isinstance(given, (bytes, bytearray)):
        value = bytes(given)
    else:
        raise ConfigurationError(
            f"{where} must be bytes or str (or a list of them, newest first), "
            f"got {type(given).__name__}"
        )
    if len(value) < MIN_SECRET_BYTES:
        # never the value itself in the message: it is a secret, even a short one
        raise ConfigurationError(
            f"{where} has {len(value)} bytes of key material; at least {MIN_SECRET_BYTES} "
            f"are needed (e.g. secrets.token_bytes(32))"
        )
    return value


def make_sealer(secret: Any, encrypt: Any) -> Plain | Signed | Encrypted:
    """Validate ``secret`` / ``encrypt`` and return what seals and opens entries."""
    from .checks import flag

    flag("encrypt", encrypt)
    if secret is None:
        if encrypt:
            raise ConfigurationError("encrypt=True needs secret=... (the key is derived from it)")
        return PLAIN
    if isinstance(secret, (list, tuple)):
        if not secret:
            raise ConfigurationError("secret=[] holds no secret; pass None for no signing")
        materials = [_material(s, f"secret[{i}]") for i, s in enumerate(secret)]
    else:
        materials = [_material(secret, "secret")]
    return Encrypted(materials) if encrypt else Signed(materials)
