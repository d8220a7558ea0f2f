"""Canonical JSON (RFC 8785, JSON Canonicalization Scheme) for audit events.

What the audit trail hashes is the event's canonical form, so two writers (or a writer and an
independent verifier) must produce the same bytes for the same document:

- object members sorted by their names compared as UTF-16 code units (RFC 8785 §3.2.3);
- no insignificant whitespace; strings as UTF-8 with only `"`, `\\` and control characters
  escaped (the short forms `\\b \\f \\n \\r \\t`, otherwise `\\u00xx`, lower-case hex);
- numbers: integers in full; floats as ECMAScript's `Number.prototype.toString` (the shortest
  form that reads back as the same double: `1.0` is `1`, `1e21` is `1e+21`, `1e-7` is `1e-7`),
  NaN and infinities refused;
- only JSON types (dict with string keys, list, str, int, float, bool, None); anything else is
  refused rather than silently converted, and so are strings that cannot be UTF-8 (lone
  surrogates).

Pure Python with no dependency, so the offline verifier can carry it; where orjson is installed
(the platform) the common case, an ASCII document of strings, integers, booleans and nulls, is
written by it (about 20 times faster), with the same bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover (the platform installs it; a carried verifier may not)
    orjson = None  # type: ignore[assignment]

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
for _code in range(0x20):
    _ESCAPES.setdefault(chr(_code), f"\\u{_code:04x}")
_TRANSLATION = str.maketrans(_ESCAPES)


class NotCanonicalisable(ValueError):
    """The document holds something JSON (or RFC 8785) cannot represent exactly."""


def _string(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotCanonicalisable("a string is not valid Unicode (lone surrogate)") from exc
    return '"' + value.translate(_TRANSLATION) + '"'


def format_float(value: float) -> str:
    """ECMAScript Number.prototype.toString for a finite double (RFC 8785 §3.2.2.3)."""
    if math.isnan(value) or math.isinf(value):
        raise NotCanonicalisable("NaN and infinities have no JSON form")
    if value == 0:
        return "0"  # also -0
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that read back as the same double; re-lay them out.
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # n: position of the decimal point relative to the digits, as in ECMA-262 §7.1.12.1.
    shift = int(exponent) if exponent else 0
    if whole == "0":
        point = shift - (len(fraction) - len(fraction.lstrip("0")))
    else:
        point = len(whole) + shift
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= 21:
        return sign + digits + "0" * (point - k)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    e = point - 1
    exp = f"e+{e}" if e >= 0 else f"e-{-e}"
    if k == 1:
        return sign + digits + exp
    return sign + digits[0] + "." + digits[1:] + exp


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(format_float(value))
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise NotCanonicalisable(f"object key {key!r} is not a string")
        out.append("{")
        first = True
        for key in sorted(value, key=_utf16_key):
            if not first:
                out.append(",")
            first = False
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise NotCanonicalisable(f"{type(value).__name__} is not a JSON type")


class _HasFloat(Exception):
    pass


def _float_seen(_token: str) -> float:
    raise _HasFloat


def _fast(document: Any) -> str | None:
    """The standard library's C encoder gives the RFC 8785 form exactly when the text is ASCII
    (so code point and UTF-16 key order agree) and holds no float (formatted differently);
    None when that cannot be shown, or the document is not plain JSON."""
    if not isinstance(document, dict):
        return None
    if orjson is not None:
        return _fast_orjson(document)
    try:
        text = json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        # Reading it back equal also rules out keys the encoder coerced to strings.
        if not text.isascii() or json.loads(text, parse_float=_float_seen) != document:
            return None
    except (_HasFloat, TypeError, ValueError):
        return None
    return text


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON type")


_ORJSON_OPTIONS = (
    (
        orjson.OPT_SORT_KEYS
        | orjson.OPT_PASSTHROUGH_DATACLASS
        | orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_SUBCLASS
    )
    if orjson is not None
    else 0
)


def _plain(value: Any) -> bool:
    """Only exact str, int, bool, None, dict and list/tuple inside: no float (formatted
    differently), and nothing orjson would convert on its own (UUID, enum members)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is dict:
        return all(_plain(item) for item in value.values())
    if kind is list or kind is tuple:
        return all(_plain(item) for item in value)
    return False


def _fast_orjson(document: dict[str, Any]) -> str | None:
    # orjson refuses keys that are not str (no OPT_NON_STR_KEYS), integers beyond 64 bits and
    # lone surrogates; sorts keys by code point (UTF-16 order too when all is ASCII) and escapes
    # exactly as RFC 8785 does (tested against the pure writer for every ASCII character).
    if not _plain(document):
        return None
    try:
        data = orjson.dumps(document, default=_refuse, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None
    if not data.isascii():
        return None
    return data.decode("ascii")


def canonical_json(document: Any) -> str:
    """The RFC 8785 canonical form of a JSON document, as text (encode it as UTF-8)."""
    fast = _fast(document)
    if fast is not None:
        return fast
    out: list[str] = []
    _write(document, out)
    return "".join(out)


def canonical_bytes(document: Any) -> bytes:
    return canonical_json(document).encode("utf-8")


def is_canonical(data: bytes) -> bool:
    """Whether bytes are exactly the canonical form of the JSON document they hold."""
    try:
        document = json.loads(data)
        return canonical_bytes(document) == data
    except (ValueError, RecursionError):
        return False
