# SPDX-License-Identifier: Apache-2.0
"""Shared secrets on disk: the directory secret and the signaling API keys.

A secret file holds one secret per line (blank lines and ``#`` comments are
ignored). The first line is the one in use; the lines after it are still
accepted, which is how a secret is rotated without a flag day: put the new
one on top, roll it out, then delete the old line (docs/deployment.md,
"Security").

``load_secrets`` is the one reader. With ``create=True`` a missing file is
created with a fresh random secret, mode 0600 in a 0700 directory, so that a
one-host deployment is authenticated from its first start without a step to
forget; without it, a missing file is an error that says where the secret
should come from. An environment variable (``VOXRELAY_DIRECTORY_SECRET``,
``VOXRELAY_API_KEY``) overrides the file, for containers that mount secrets
as environment.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

SECRET_BYTES = 32
MIN_SECRET_CHARS = 16
"""Shorter secrets are refused: a guessable secret is no secret."""


class SecretError(ValueError):
    """A secret that cannot be read or used; the message says which file and why."""


def new_secret() -> str:
    """A fresh secret: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def _parse(text: str, where: str) -> list[str]:
    values = [line.strip() for line in text.splitlines()]
    values = [v for v in values if v and not v.startswith("#")]
    if not values:
        raise SecretError(f"{where} holds no secret")
    for value in values:
        if len(value) < MIN_SECRET_CHARS:
            raise SecretError(
                f"{where}: a secret of {len(value)} characters is too short "
                f"(at least {MIN_SECRET_CHARS}; `voxrelay secret create` makes one)")
        if any(c.isspace() for c in value):
            raise SecretError(f"{where}: a secret must not contain whitespace")
    return values


def matching_secret(value: str, secrets: Sequence[str]) -> str | None:
    """The one of ``secrets`` that equals ``value``, or None. Every candidate is
    compared in constant time, with no early exit, so that the time taken says
    neither how close a guess was nor which secret of a rotation it matched."""
    matched = None
    for secret in secrets:
        if hmac.compare_digest(value.encode(), secret.encode()):
            matched = secret
    return matched


def write_secret_file(path: Path, value: str | None = None) -> str:
    """Create ``path`` holding ``value`` (or a new secret), mode 0600, atomically;
    an existing file is left alone and its first secret returned."""
    if path.exists():
        return _parse(path.read_text(), str(path))[0]
    value = value or new_secret()
    _parse(value, "the new secret")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
        # link() fails if another process created the file meanwhile: theirs wins.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _parse(path.read_text(), str(path))[0]
    finally:
        Path(tmp).unlink(missing_ok=True)
    return value


def load_secrets(path: str | Path, *, env: str = "", create: bool = False,
                 what: str = "secret") -> list[str]:
    """The secrets in ``path`` (or in environment variable ``env``), first in use.

    Raises ``SecretError`` naming the file when it is missing (and not
    ``create``), unreadable, empty, too short, or open to every user.
    """
    if env and os.environ.get(env):
        return _parse(os.environ[env], f"${env}")
    if not str(path):
        raise SecretError(f"no {what} file is configured (and ${env} is not set)"
                          if env else f"no {what} file is configured")
    file = Path(path)
    try:
        text = file.read_text()
    except FileNotFoundError:
        if not create:
            hint = f" or set ${env}" if env else ""
            raise SecretError(
                f"{what} file {file} does not exist: copy it from the host that made it{hint}"
            ) from None
        try:
            write_secret_file(file)
        except OSError as exc:
            raise SecretError(f"cannot create {what} file {file}: {exc.strerror or exc}") from None
        text = file.read_text()
    except OSError as exc:
        raise SecretError(f"cannot read {what} file {file}: {exc.strerror or exc}") from None
    mode = file.stat().st_mode
    if mode & stat.S_IRWXO:
        # Group access is allowed, so that a service group can share the file.
        raise SecretError(
            f"{what} file {file} is open to every user (mode {stat.filemode(mode)}); "
            f"chmod 600 {file}")
    return _parse(text, str(file))


DIRECTORY_SECRET_ENV = "VOXRELAY_DIRECTORY_SECRET"  # noqa: S105 - a variable's name
API_KEY_ENV = "VOXRELAY_API_KEY"


def directory_secrets(path: str | Path, *, create: bool = False) -> list[str]:
    """The directory secret(s), the one in use first: ``$VOXRELAY_DIRECTORY_SECRET``
    or the file at ``path`` (``create``: make it if missing; the embedded
    directory does at start)."""
    return load_secrets(path, env=DIRECTORY_SECRET_ENV, create=create, what="directory secret")


def directory_client_secret(path: str | Path, url: str) -> str:
    """The secret a client of directory ``url`` sends: none for ``memory``;
    for a Redis URL that carries its own password the secret file is optional
    (the URL's password wins anyway)."""
    if url == "memory":
        return ""
    netloc = url.split("/")[2] if url.count("/") >= 2 else ""
    if url.startswith(("redis://", "rediss://", "unix://")) and "@" in netloc:
        try:
            return directory_secrets(path)[0]
        except SecretError:
            return ""
    return directory_secrets(path)[0]
