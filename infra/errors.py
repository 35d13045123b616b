"""The toolkit's expected failure, shared by the domain code and the CLI.

Domain code raises `FailoverError` with a message that says what failed, with which value,
and what to do; the CLI (`infra.cliutil.command`) renders it as one line and exit code 2.
It lives here, not in the CLI module, so that domain code imports no typer or rich.
"""
from __future__ import annotations


class FailoverError(RuntimeError):
    """An expected failure with a message that says what failed and what to do."""
