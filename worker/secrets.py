"""Placeholder substitution (`<NAME>`) and redaction of secret values from anything shown or stored."""

import base64
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus

# Vendor docs write placeholders in capitals (<CLIENT_ID>); lower-case `<div>` in a script is just HTML.
PLACEHOLDER = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
UNDECLARED_CANDIDATE = re.compile(r"<([A-Z][A-Z0-9_]*)>")
REDACTED = "[redacted]"
# Below this length a value is too likely to occur by chance (e.g. "1") to be worth masking.
MIN_REDACT_LEN = 4


@dataclass(frozen=True)
class Secrets:
    """Resolved placeholder values; `secret` names the ones that must never be shown."""

    values: Mapping[str, str] = field(default_factory=dict)
    secret: frozenset[str] = frozenset()

    def substitute(self, text: str) -> str:
        """Replace every declared `<NAME>` in text; undeclared ones stay as written."""
        if "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self.values.get(m.group(1), m.group(0)), text)

    def substitute_js(self, code: str) -> str:
        """Substitute into JavaScript: values are escaped so that inside any string literal ('', "", ``) they
        stay exactly themselves: a secret with a quote or backslash neither breaks the script nor changes."""
        if "<" not in code:
            return code
        return PLACEHOLDER.sub(lambda m: _js_escape(self.values[m.group(1)]) if m.group(1) in self.values
                               else m.group(0), code)

    def undeclared(self, text: str) -> list[str]:
        """Capitalised `<NAME>` placeholders in text that [secrets] does not declare."""
        return sorted({n for n in UNDECLARED_CANDIDATE.findall(text) if n not in self.values})

    def secret_values(self) -> list[str]:
        """The values to mask, longest first so a secret containing another is masked whole."""
        found = {self.values[n] for n in self.secret if len(self.values[n]) >= MIN_REDACT_LEN}
        return sorted(found, key=len, reverse=True)


def _js_escape(value: str) -> str:
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    return escaped.replace("'", "\\u0027").replace("`", "\\u0060").replace("${", "\\u0024{")


@functools.lru_cache(maxsize=4096)
def encoded_forms(value: str) -> tuple[str, ...]:
    """A value as it may appear in text: as is, percent- and form-encoded, JSON-escaped, Base64."""
    # Cached: every pull masks several texts with the same few secrets, and encoding them each time cost
    # more than the masking itself.
    # Base64 (as a script's btoa(secret) header sends it) padded first, then bare, for where the padding differs.
    encoded = base64.b64encode(value.encode("utf-8")).decode()
    forms = (value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1], encoded, encoded.rstrip("="))
    return tuple(dict.fromkeys(forms))


def redact(text: str, values: Iterable[str]) -> str:
    """Mask every occurrence of each value, also in its common encodings (form, JSON escapes)."""
    for value in values:
        if len(value) < MIN_REDACT_LEN:
            continue
        for form in encoded_forms(value):
            text = text.replace(form, REDACTED)
    return text
