"""Secret references (`env/NAME`) resolved at run time, and redaction of their values.

Every resolved value is remembered so that `redact()` can scrub it from any text that is about
to be logged, reported or raised.
"""
from __future__ import annotations

import os
import re

REF = re.compile(r"^env/([A-Za-z_][A-Za-z0-9_]*)$")
_resolved: set[str] = set()


class MissingSecret(LookupError):
    pass


def is_ref(value: object) -> bool:
    return isinstance(value, str) and bool(REF.match(value))


def resolve(value: str, where: str = "") -> str:
    """Returns the value behind an env/NAME reference (other values pass through)."""
    match = REF.match(value) if isinstance(value, str) else None
    if not match:
        return value
    name = match.group(1)
    secret = os.environ.get(name)
    if not secret:
        place = f" (needed by {where})" if where else ""
        raise MissingSecret(f"secret {value} is not set{place}: export {name}=... before running")
    remember(secret)
    return secret


def remember(secret: str) -> None:
    if secret and len(secret) >= 4:
        _resolved.add(secret)


def redact(text: str) -> str:
    for secret in sorted(_resolved, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
