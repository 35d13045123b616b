"""Client-side encryption of everything the toolkit puts into a store (pure, but for `obscure`).

No store holds a plaintext row or media object, whichever provider runs it:
- every pgBackRest repository is encrypted by pgBackRest itself (`repoN-cipher-type`
  aes-256-cbc), with the backup key as its passphrase;
- every media bucket is reached through an rclone `crypt` remote, `<site>-crypt`, over the
  folder SEALED of the site's bucket: the app writes its media objects through its own site's
  remote, and the protector, a failover's catch-up and a restore copy them from crypt remote to
  crypt remote, so no bucket ever holds one in plaintext, its own site's included.

The two keys are secrets the operator holds outside every provider (env/FAILOVER_BACKUP_KEY and
env/FAILOVER_MEDIA_KEY; the spec's `config.encryption.key_copies` says where, and the audit
checks that at least two of those places are at none of the sites' providers). A provider that
keeps a copy of a bucket therefore keeps ciphertext; losing both keys loses every backup.
rclone's crypt password and salt are derived from the media key, so one secret covers both.
"""
from __future__ import annotations

import hashlib
import hmac
import subprocess

from infra import secrets

BACKUP_KEY_REF = "env/FAILOVER_BACKUP_KEY"
MEDIA_KEY_REF = "env/FAILOVER_MEDIA_KEY"
KEY_REFS = (BACKUP_KEY_REF, MEDIA_KEY_REF)
CIPHER = "aes-256-cbc"
SEALED = "sealed"  # the folder of a bucket that its crypt remote encrypts into
MIN_KEY_LENGTH = 32


class WeakKey(ValueError):
    """A key is too short to be one (a typo'd or placeholder secret)."""


def _key(ref: str, what: str) -> str:
    value = secrets.resolve(ref, what)
    if len(value) < MIN_KEY_LENGTH:
        name = secrets.REF.match(ref).group(1)
        raise WeakKey(f"secret {ref} is {len(value)} characters: an encryption key needs at least "
                        f"{MIN_KEY_LENGTH}; make one with `openssl rand -base64 48` and export {name}")
    return value


def backup_key() -> str:
    return _key(BACKUP_KEY_REF, "pgBackRest's repository encryption")


def media_key() -> str:
    return _key(MEDIA_KEY_REF, "rclone's media encryption")


def repo_options(index: int) -> dict[str, str]:
    """pgBackRest's cipher options for repository `index`: every repository is encrypted."""
    return {f"repo{index}-cipher-type": CIPHER, f"repo{index}-cipher-pass": backup_key()}


def crypt_remote(site: str) -> str:
    return f"{site}-crypt"


def derived(key: str, purpose: str) -> str:
    """A value of its own for each use of one key (HMAC-SHA256), so none of them reveals another."""
    return hmac.new(key.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def obscure(value: str) -> str:
    """rclone's reversible `obscure` form, which its config file requires for crypt passwords.

    Not encryption: the rclone.conf holding it is a secret file (mode 600 on the host). The
    value goes in on stdin, never in argv."""
    result = subprocess.run(["rclone", "obscure", "-"], input=value, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"rclone obscure failed (exit {result.returncode}); check that rclone is installed")
    secrets.remember(result.stdout.strip())
    return result.stdout.strip()


def crypt_section(site: str, bucket_path: str, obscured: tuple[str, str]) -> dict[str, str]:
    """The `<site>-crypt` section over `<site>:<bucket_path>/SEALED`; `obscured` is the pair from
    `obscured_passwords()` (made once per rendered file: `rclone obscure` is a process)."""
    password, salt = obscured
    return {"type": "crypt", "remote": f"{site}:{bucket_path.rstrip('/')}/{SEALED}",
            "filename_encryption": "standard", "directory_name_encryption": "true",
            "password": password, "password2": salt}


def obscured_passwords() -> tuple[str, str]:
    key = media_key()
    return obscure(derived(key, "rclone crypt password")), obscure(derived(key, "rclone crypt salt"))


def key_environment() -> dict[str, str]:
    """NAME -> value of both keys, for a host's secrets file (infra/sites/services.write_host_secrets)."""
    return {secrets.REF.match(ref).group(1): value
            for ref, value in ((BACKUP_KEY_REF, backup_key()), (MEDIA_KEY_REF, media_key()))}
