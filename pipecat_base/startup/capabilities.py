"""The capability document served at ``GET|HEAD /pcc/capabilities``.

Built once at startup from `features`, validated against the platform's rules (stricter on
ASCII), and serialised compact with sorted keys::

    {"capabilities":{"transport.daily":{"available":false,"reason":"..."},...},"version":1}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from pipecat_base.startup.features import Feature

MAX_ENTRIES = 64
MAX_NAME = 63
MAX_TEXT = 256
MAX_BYTES = 16 * 1024
NAME_RE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*$")
ENTRY_KEYS = {"available", "reason", "value"}


class CapabilityError(ValueError):
    """The document breaks one of the platform's rules."""


def clean_text(text: str) -> str:
    """One printable-ASCII line without brackets, at most 256 characters."""
    text = re.sub(r"\s+", " ", text).strip().replace("[", "(").replace("]", ")")
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def build_document(features: Iterable[Feature]) -> bytes:
    """Serialise and validate the document.

    Raises:
        CapabilityError: naming the rule a feature breaks.
    """
    capabilities: dict[str, dict[str, Any]] = {}
    for feature in features:
        entry: dict[str, Any] = {"available": feature.available}
        if not feature.available:
            entry["reason"] = clean_text(feature.reason or "") or f"{feature.name} is unavailable"
        capabilities[feature.name] = entry
    document = {"version": 1, "capabilities": capabilities}
    validate(document)
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("ascii")
    if len(body) > MAX_BYTES:
        raise CapabilityError(f"the document is {len(body)} bytes, over {MAX_BYTES}")
    return body


def validate(document: Any) -> None:
    """Check a document against the platform's rules."""
    if not isinstance(document, dict) or set(document) != {"version", "capabilities"}:
        raise CapabilityError("the document must have exactly 'version' and 'capabilities'")
    version = document["version"]
    if type(version) is not int or version != 1:
        raise CapabilityError("'version' must be the integer 1")
    entries = document["capabilities"]
    if not isinstance(entries, dict) or len(entries) > MAX_ENTRIES:
        raise CapabilityError(f"'capabilities' must be an object of at most {MAX_ENTRIES} entries")
    for name, entry in entries.items():
        if len(name) > MAX_NAME or not NAME_RE.match(name):
            raise CapabilityError(f"capability name {name!r} is not allowed")
        if not isinstance(entry, dict) or not set(entry) <= ENTRY_KEYS or "available" not in entry:
            raise CapabilityError(f"capability {name!r} must be an object with 'available'")
        if type(entry["available"]) is not bool:
            raise CapabilityError(f"capability {name!r}: 'available' must be a boolean")
        for key in ("reason", "value"):
            text = entry.get(key)
            if text is not None and (
                not isinstance(text, str)
                or len(text) > MAX_TEXT
                or any(not 32 <= ord(c) < 127 or c in "[]" for c in text)
            ):
                raise CapabilityError(f"capability {name!r}: {key!r} must be printable ASCII")
