"""Host text made safe for evidence, JSON and terminals: one escaping scheme for all.

Names that come from the host (file names, process names, command lines,
environment strings, socket paths) are bytes to the kernel. Python hands them
over as ``str`` with undecodable bytes as lone surrogates (``surrogateescape``),
which cannot be encoded as UTF-8, so one such name would break every JSON
file, YARA external or report that meets it. The scheme, everywhere:

* an undecodable byte becomes the four ASCII characters ``\\xNN`` (lower-case
  hex), as Python's ``backslashreplace`` writes it; any other lone surrogate
  (only possible in decoded JSON) becomes ``\\uXXXX``;
* text that is valid UTF-8 is left exactly as it was;
* when a string field of a record (an object, at any depth) had to be
  escaped, the object also gets ``<field>_hex`` with the exact bytes (unless
  it has such a field already), so the original name can always be recovered.

For a terminal (``display``) control characters and the Unicode direction
overrides are escaped the same way, so a name cannot move the cursor, clear a
line or reorder what is printed after it.
"""
from __future__ import annotations

import json
import re

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from typing import Any

# Lone surrogates: what surrogateescape makes of undecodable bytes, and worse.
_SURROGATE = re.compile("[\ud800-\udfff]")
# What a terminal must not receive raw: C0 and C1 controls, DEL, bidi overrides
# and isolates, line and paragraph separators.
_UNSAFE_DISPLAY = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def needs_escape(text: str) -> bool:
    """Return True when text holds an undecodable byte (cannot be encoded as UTF-8)."""
    if text.isascii():
        return False
    return _SURROGATE.search(text) is not None


def escape(text: str) -> str:
    """Return text with each undecodable byte as ``\\xNN`` (valid UTF-8 is unchanged)."""
    if text.isascii():
        return text
    return _SURROGATE.sub(_escape_char, text)


def escape_bytes(data: bytes) -> str:
    """Return bytes from the host as text under the same scheme as escape()."""
    return data.decode("utf-8", "backslashreplace")


def raw_bytes(text: str) -> bytes:
    """Return the exact bytes of a host name Python decoded with surrogateescape."""
    return text.encode("utf-8", "surrogateescape")


def display(text: Any) -> str:
    """Return text safe to print on a terminal: escape() plus control characters."""
    return _UNSAFE_DISPLAY.sub(_escape_char, escape(str(text)))


def clean(obj: Any) -> Any:
    """Return obj with every string escaped (keys too); objects gain ``<key>_hex``.

    Returns obj itself (no copy) when nothing needed escaping.
    """
    out, _ = _clean(obj)
    return out


def _clean(obj: Any) -> tuple[Any, bool]:
    if isinstance(obj, str):
        if needs_escape(obj):
            return escape(obj), True
        return obj, False
    if isinstance(obj, dict):
        changed = False
        items: list[tuple[Any, Any]] = []
        hexes: dict[str, str] = {}
        for key, value in obj.items():
            new_key, key_changed = _clean(key) if isinstance(key, str) else (key, False)
            new_value, value_changed = _clean(value)
            if value_changed and isinstance(value, str) and isinstance(key, str):
                hexes[f"{new_key}_hex"] = raw_bytes(_lone_to_bytes(value)).hex()
            changed = changed or key_changed or value_changed
            items.append((new_key, new_value))
        if not changed:
            return obj, False
        out = dict(items)
        for key, value in hexes.items():
            out.setdefault(key, value)
        return out, True
    if isinstance(obj, (list, tuple)):
        cleaned = [_clean(v) for v in obj]
        if not any(c for _, c in cleaned):
            return obj, False
        return [v for v, _ in cleaned], True
    return obj, False


def _lone_to_bytes(text: str) -> str:
    """Replace surrogates that are not surrogateescape bytes (they have no bytes) by U+FFFD."""
    return re.sub("[\ud800-\udc7f\udd00-\udfff]", "\ufffd", text)


def dumps(obj: Any, **kwargs: Any) -> str:
    """Return json.dumps(clean(obj)) as ASCII; fast when nothing needs escaping.

    Keyword arguments go to json.dumps (``default=str`` unless given).
    """
    kwargs.setdefault("default", str)
    kwargs["ensure_ascii"] = True
    out = json.dumps(obj, **kwargs)
    # A lone surrogate can only show as \\udXXX in ASCII JSON (valid non-BMP
    # characters too, as pairs, which cost one more pass and stay as they are).
    if "\\ud" in out:
        cleaned = clean(obj)
        if cleaned is not obj:
            out = json.dumps(cleaned, **kwargs)
    return out


def json_line(obj: Any) -> bytes:
    """Return one compact JSON line (newline included) with sorted keys."""
    return (dumps(obj, sort_keys=True) + "\n").encode("ascii")


def json_doc(obj: Any) -> bytes:
    """Return an indented JSON document (newline included) with sorted keys."""
    return (dumps(obj, indent=2, sort_keys=True) + "\n").encode("ascii")


__all__ = ["escape", "escape_bytes", "display", "clean", "dumps", "json_line", "json_doc",
           "needs_escape", "raw_bytes"]
