"""JSON from peers we do not control (APIs, script helpers), decoded into text that can always be written out."""

import json
import re
from typing import Any

# JSON may spell a lone UTF-16 surrogate (`"\ud800"`), which json.loads accepts but no UTF-8 file, log line or
# SQLite row can hold. Only texts containing such an escape are walked, so the common case costs one search.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE_BYTES = re.compile(_SURROGATE_ESCAPE.pattern.encode())


def loads(text: str | bytes, **options: Any) -> Any:
    """json.loads, with every lone surrogate replaced by U+FFFD (paired ones are already one character)."""
    data = json.loads(text, **options)
    if isinstance(text, str):
        found = _SURROGATE_ESCAPE.search(text) is not None
    else:
        found = _SURROGATE_ESCAPE_BYTES.search(text) is not None
    return _repair(data) if found else data


def _repair(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_repair(item) for item in value]
    if isinstance(value, dict):
        return {_repair(key): _repair(item) for key, item in value.items()}
    return value
