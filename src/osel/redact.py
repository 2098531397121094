"""Keep secrets out of every log line: the last step of log rendering scrubs them.

The secrets are the configuration's own (every `SecretStr`, and the password
part of every URL that carries one), so a token that turns up inside an
exception's text from a library is masked too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, SecretStr

MASK = "********"
_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://([^@/\s]+)@", re.I)
_MIN_LENGTH = 4  # shorter values would mask ordinary words


def _url_passwords(url: str) -> set[str]:
    found = set()
    for netloc in url.split(","):
        match = _USERINFO.search(netloc) or re.match(r"([^@/\s]+)@", netloc)
        if match and ":" in match.group(1):
            password = match.group(1).split(":", 1)[1]
            found |= {password, unquote(password)}
    return found


def secret_values(settings: BaseModel) -> set[str]:
    """Every secret value in a settings tree (and the passwords inside secret URLs)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            found.add(secret)
            found.update(_url_passwords(secret))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(settings)
    return {s for s in found if len(s) >= _MIN_LENGTH}


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        ordered = sorted(set(secrets), key=len, reverse=True)  # longest first
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def scrub(self, text: str) -> str:
        return self.pattern.sub(MASK, text) if self.pattern is not None else text

    def __call__(self, _logger: Any, _method: str, rendered: Any) -> Any:
        """A structlog processor placed after the renderer."""
        return self.scrub(rendered) if isinstance(rendered, str) else rendered
