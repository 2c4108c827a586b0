"""Deterministic fake values: the same input and key give the same fake, in every table and every run.

Each fake is derived from ``HMAC-SHA256(key, value)`` (:func:`digest`) and small word lists kept in
this module, never from a random source or a third-party faker whose output changes between its
versions: a bundle masked today and one masked next year with the same salt agree, so values joined
across tables (an author's email in ``authors`` and in ``directus_users``) stay joined.
:data:`VERSION` names this derivation; a change to the lists or the rules is a new version.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from typing import Any

#: The derivation's version, recorded in a masked bundle's manifest.
VERSION = 1

#: The domain of every fake email (RFC 2606 reserves it; CairnCMS's login accepts it).
EMAIL_DOMAIN = "example.com"

FIRST_NAMES = (
    "Alex", "Amara", "Anton", "Aria", "Bea", "Benedikt", "Bram", "Carla", "Cato", "Chen", "Dana", "Dario",
    "Delia", "Emil", "Esra", "Ezra", "Farah", "Felix", "Freya", "Gael", "Greta", "Hana", "Hugo", "Ida",
    "Ilan", "Ines", "Jasper", "Jonas", "Juna", "Kai", "Kara", "Kenji", "Lale", "Lena", "Leon", "Lia",
    "Luca", "Mara", "Marek", "Mila", "Milo", "Nadia", "Nico", "Nora", "Olga", "Omar", "Oskar", "Paula",
    "Pia", "Quinn", "Rafael", "Rina", "Robin", "Ruth", "Sami", "Sara", "Selin", "Soren", "Tariq", "Tess",
    "Theo", "Uma", "Vera", "Viktor", "Wen", "Willa", "Xenia", "Yara", "Yusuf", "Zoe",
)

LAST_NAMES = (
    "Abbott", "Achebe", "Alvarez", "Andersen", "Bakker", "Barros", "Becker", "Bianchi", "Brandt", "Castillo",
    "Chandra", "Costa", "Dahl", "Delgado", "Dubois", "Eriksen", "Esposito", "Falk", "Fischer", "Fontaine",
    "Garcia", "Grant", "Haas", "Hale", "Ibarra", "Ito", "Jansen", "Jovanovic", "Kaur", "Keller", "Kowalski",
    "Lambert", "Lindqvist", "Lopes", "Maier", "Marsh", "Moreau", "Nakamura", "Nilsen", "Novak", "Okafor",
    "Olsen", "Ortiz", "Park", "Petrov", "Quint", "Reyes", "Rossi", "Sato", "Schmidt", "Silva", "Soto",
    "Tanaka", "Torres", "Ueda", "Varga", "Vogel", "Wagner", "Weiss", "Xu", "Yilmaz", "Young", "Zeller",
)

WORDS = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod",
    "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim", "ad", "minim",
    "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi", "aliquip", "ex", "ea",
    "commodo", "consequat", "duis", "aute", "irure", "in", "reprehenderit", "voluptate", "velit", "esse",
    "cillum", "fugiat", "nulla", "pariatur", "excepteur", "sint", "occaecat", "cupidatat", "non",
    "proident", "sunt", "culpa", "qui", "officia", "deserunt", "mollit", "anim", "id", "est", "laborum",
)


def canonical(value: Any) -> bytes:
    """The bytes a value is keyed by: a string's UTF-8, anything else its compact sorted JSON."""
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def digest(key: bytes, value: Any) -> bytes:
    """``HMAC-SHA256(key, value)``: everything a fake of ``value`` is made from."""
    return hmac.new(key, b"cairn-migrate-mask\0" + canonical(value), hashlib.sha256).digest()


def _numbers(seed: bytes, kind: str) -> Iterator[int]:
    """An endless stream of 32-bit numbers from ``seed`` (SHA-256 in counter mode), per fake kind."""
    counter = 0
    while True:
        block = hashlib.sha256(seed + kind.encode() + counter.to_bytes(4, "big")).digest()
        for i in range(0, 32, 4):
            yield int.from_bytes(block[i:i + 4], "big")
        counter += 1


def _pick(numbers: Iterator[int], words: tuple[str, ...]) -> str:
    return words[next(numbers) % len(words)]


def first_name(seed: bytes) -> str:
    return _pick(_numbers(seed, "first"), FIRST_NAMES)


def last_name(seed: bytes) -> str:
    return _pick(_numbers(seed, "last"), LAST_NAMES)


def name(seed: bytes) -> str:
    return f"{first_name(seed)} {last_name(seed)}"


def email(seed: bytes) -> str:
    """``first.last.<16 hex>@example.com``: valid, lower case, and unique for distinct inputs (64 bits of the HMAC)."""
    return f"{first_name(seed).lower()}.{last_name(seed).lower()}.{seed[:8].hex()}@{EMAIL_DOMAIN}"


def phone(seed: bytes) -> str:
    """A North American number in the 555 range, e.g. ``+1 555 014 2397``."""
    numbers = _numbers(seed, "phone")
    return f"+1 555 {next(numbers) % 1000:03d} {next(numbers) % 10000:04d}"


def text(seed: bytes, original: str) -> str:
    """Lorem words of about the original's length (never longer), a capital and a final full stop if it had them."""
    length = len(original)
    if length == 0:
        return original
    numbers = _numbers(seed, "text")
    if length < 4:
        return "".join("abcdefghijklmnopqrstuvwxyz"[next(numbers) % 26] for _ in range(length))
    words: list[str] = []
    while len(" ".join(words)) < length:
        words.append(_pick(numbers, WORDS))
    result = " ".join(words)[:length].rstrip()
    if original[:1].isupper():
        result = result[:1].upper() + result[1:]
    if original.endswith(".") and not result.endswith("."):
        result = result[:-1].rstrip() + "."
    return result


def hash_hex(seed: bytes) -> str:
    """The HMAC itself in hex (64 characters): unique for distinct inputs, useless without the salt."""
    return seed.hex()


#: Masker name → (seed, original string) → fake.  ``null``, ``keep`` and ``static:`` need no seed.
FAKERS: dict[str, Callable[[bytes, str], str]] = {
    "email": lambda seed, _: email(seed),
    "name": lambda seed, _: name(seed),
    "first_name": lambda seed, _: first_name(seed),
    "last_name": lambda seed, _: last_name(seed),
    "phone": lambda seed, _: phone(seed),
    "text": text,
    "hash": lambda seed, _: hash_hex(seed),
}
