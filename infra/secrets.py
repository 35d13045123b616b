"""Secret references (`env/NAME`) resolved at run time, and redaction of their values.

Every resolved value is remembered so that `redact()` can scrub it from any text that is about
to be logged, reported or raised.
"""
from __future__ import annotations

import os
import re
import shlex

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


# ---------------------------------------------------------------- NAME=value files (mode 600)

def render_env(values: dict[str, str]) -> str:
    """One NAME=value line each (shell-quoted: the file can be sourced), sorted; a value with a
    line break is refused (by name)."""
    for name, value in values.items():
        if "\n" in value or "\0" in value:
            raise ValueError(f"secret {name} spans lines; a secrets file holds one NAME=value per line")
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in sorted(values.items()))


def parse_env(text: str) -> dict[str, str]:
    """NAME=value lines, values plain or shell-quoted (`render_env`, `inventory pull`)."""
    values = {}
    for line in text.splitlines():
        name, equals, raw = line.strip().partition("=")
        if equals and not name.startswith("#"):
            words = shlex.split(raw) if raw[:1] in ("'", '"') else [raw]
            values[name] = words[0] if words else ""
    return values


def load_env_file(path, override: bool = False) -> list[str]:
    """Puts a secrets file's values into the environment (remembered for redaction): every one
    with `override`, else only those not set already. Returns the names it set; a file this
    user cannot read sets none."""
    try:
        values = parse_env(open(path).read())
    except (FileNotFoundError, PermissionError):
        return []
    loaded = []
    for name, value in values.items():
        if override or not os.environ.get(name):
            remember(value)
            os.environ[name] = value
            loaded.append(name)
    return loaded
