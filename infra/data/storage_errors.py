"""Turning pgBackRest and rclone failures against object stores into messages an operator can act on.

The tools' output is used only to classify the failure: a message names the site, the storage
type, where the store is (endpoint and bucket or container), what went wrong and the likely
fix, plus a fixed token from the output (an error code), never the output itself, because
that can hold request URLs with signatures (Azure SAS) or other credentials.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from infra import secrets
from infra.data.storage import Storage, storage_for
from infra.sites.contract import MediaRemote, Repository

CREDENTIALS, MISSING, UNREACHABLE, TLS, UNKNOWN = "credentials", "missing-bucket", "unreachable", "tls", "unknown"

# First match wins: a TLS failure also mentions the connection; a refused connection has no HTTP status.
_PATTERNS = (
    (TLS, r"unable to verify certificate|certificate verify failed|x509: [a-z ]+|tls: [a-z ]+"
          r"|certificate (?:has expired|is not valid)|\[09[5-9]\]|SSL routines"),
    (UNREACHABLE, r"\[049\]|unable to connect to|connection refused|no such host|network is unreachable"
                  r"|i/o timeout|\[111\]|host is unreachable|timeout while|timed out"),
    (CREDENTIALS, r"SignatureDoesNotMatch|InvalidAccessKeyId|InvalidToken|ExpiredToken|AuthorizationFailure"
                  r"|AuthenticationFailed|AuthorizationPermissionMismatch|AccessDenied|invalid_grant|Unauthorized"
                  r"|Forbidden|(?:failed with|status code:?|StatusCode=|Error) 40[13]\b"),
    (MISSING, r"NoSuchBucket|ContainerNotFound|bucket does not exist|container does not exist"
              r"|directory not found|404 \(Not Found\)|notFound|googleapi: Error 404"),
)


@dataclass(frozen=True)
class Problem:
    kind: str
    detail: str  # the matched token, e.g. "[049]" or "SignatureDoesNotMatch": never free text


def classify(output: str) -> Problem:
    for kind, pattern in _PATTERNS:
        match = re.search(pattern, output, re.IGNORECASE)
        if match:
            return Problem(kind, match.group(0).strip())
    return Problem(UNKNOWN, "")


_SUMMARY = {
    CREDENTIALS: "the store refused the credentials",
    MISSING: "the {noun} does not exist",
    UNREACHABLE: "the endpoint did not answer",
    TLS: "the TLS certificate of the endpoint could not be verified",
    UNKNOWN: "the operation failed",
}

def _fix(kind: str, storage: Storage, refs: list[str], ca_option: str) -> str:
    held = f" (held in {', '.join(refs)})" if refs else ""
    noun = storage.noun
    return {
        CREDENTIALS: f"check {storage.credentials}{held}: wrong, expired or rotated, "
                     f"or not allowed to write to this {noun}"
                     + (" (S3 also answers 403 for a bucket that does not exist when the key may use only "
                        "its own bucket: check the name)" if storage.type == "s3" else ""),
        MISSING: f"create the {noun} (`pulumi up` for the site creates it) or correct its name in the site's outputs",
        UNREACHABLE: "check that the store (or its emulator) is running and that endpoint and port are right; "
                     "protection to the other repositories goes on without it",
        TLS: f"point {ca_option} at the CA that signed the endpoint's certificate, and use a host name that the "
             f"certificate names (pgBackRest does not match IP addresses)",
        UNKNOWN: "run the command again with --log-level-console=debug on the host and read the tool's own error",
    }[kind]


def explain(site: str, storage: Storage, where: str, output: str, tool: str,
            refs: list[str] = (), ca_option: str = "the CA file") -> str:
    """One line: site, storage type, location, what failed, the likely fix, and the tool's error token."""
    problem = classify(output)
    summary = _SUMMARY[problem.kind].format(noun=storage.noun)
    token = f" [{tool}: {problem.detail}]" if problem.detail else f" [{tool}]"
    message = (f"site {site}: {storage.type} storage {where}: {summary}; "
               f"fix: {_fix(problem.kind, storage, list(refs), ca_option)}.{token}")
    return secrets.redact(message)


def repository_error(site: str, repo: Repository, output: str, index: int | None = None) -> str:
    """The message for a pgBackRest failure on a site's repository (repo<index> when known)."""
    storage = storage_for(repo.type)
    prefix = f"repo{index}-" if index else "repoN-"
    return explain(site, storage, storage.describe(repo), output, "pgBackRest",
                   _refs(repo.options), f"{prefix}storage-ca-file")


def media_error(site: str, storage_type: str, remote: MediaRemote, output: str, where: str = "") -> str:
    """The message for an rclone failure on a site's media bucket (`where` it is, if known better)."""
    storage = storage_for(storage_type)
    return explain(site, storage, where or storage.media_where(remote), output, "rclone", _refs(remote.options),
                   "rclone's --ca-cert (RCLONE_CA_CERT)")


def _refs(options: dict[str, str]) -> list[str]:
    # Reference names are not secret and tell the operator which variable to fix.
    return sorted({value for value in options.values() if secrets.is_ref(value)})
