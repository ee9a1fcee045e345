"""Secrets: fetched on demand from a command, a file or a systemd credential.

A secret is never stored in the file or in the models: the file says where it comes from
and :func:`resolve_secret` (or a server section's ``password()`` / ``oauth2_token()``)
fetches it as a :class:`Secret`, which never shows its value in a log, repr or traceback.
Errors never show the secret or the output of the command that was to print it.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import signal
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guard.config.wording import ConfigError, or_list

SECRET_COMMAND_TIMEOUT = 60.0
"""Seconds a password or token command may run before it is killed."""

_SECRET_READ_LIMIT = 64 * 1024  # a secret is one line; never slurp a huge file or /dev/zero


class Secret:
    """A password or token that does not show itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself; call it at the last moment, where the server needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> Any:
        # Pickles end up on disk (job stores, caches): refuse rather than leak.
        raise TypeError("a Secret cannot be pickled")


def resolve_secret(
    kind: str,
    *,
    file: Path | None,
    command: str | None,
    credential: str,
    env: Mapping[str, str] = os.environ,
    timeout: float = SECRET_COMMAND_TIMEOUT,
) -> Secret:
    """Fetch a secret the way the configuration says.

    ``kind`` is the dotted name the keys derive from (``"imap.password"`` means the keys
    ``imap.password_command`` and ``imap.password_file``). Order: the command (run through
    ``/bin/sh -c`` like mbsync's ``PassCmd``: no stdin, first line of stdout), else the file
    (first line; refused when every user can read it), else the systemd credential
    ``$CREDENTIALS_DIRECTORY/<credential>`` (``LoadCredential=``). Surrounding whitespace
    is stripped; an empty secret is an error. Errors never show the secret or the command's
    output.
    """
    return fetch_secret(
        kind,
        file=file,
        file_key=f"{kind}_file",
        command=command,
        command_key=f"{kind}_command",
        credential=credential,
        env=env,
        timeout=timeout,
    )


def fetch_secret(
    kind: str,
    *,
    file: Path | None,
    file_key: str | None,
    command: str | None,
    command_key: str,
    credential: str,
    env: Mapping[str, str],
    timeout: float,
) -> Secret:
    """:func:`resolve_secret` with the keys the errors name given explicitly (a token has
    a command key but no file key)."""
    if command is not None:
        return _first_line(_run_secret_command(command, command_key, env, timeout), command_key)
    if file is not None:
        return _first_line(_read_secret_file(file, file_key or kind), file_key or kind)
    directory = env.get("CREDENTIALS_DIRECTORY", "")
    if directory:
        path = Path(directory) / credential
        if path.is_file():
            where = f"{kind}: systemd credential {credential}"
            return _first_line(_read_limited(path, where), where)
    keys = [key for key in (file_key, command_key) if key is not None]
    looked = " (not in $CREDENTIALS_DIRECTORY)" if directory else ""
    raise ConfigError(
        f"{kind}: not configured; set {or_list(keys)}, "
        f'or provide the systemd credential "{credential}"{looked}'
    )


def _first_line(raw: bytes, where: str) -> Secret:
    try:
        text = raw.split(b"\n", 1)[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: the secret is not valid UTF-8") from None
    if not text:
        raise ConfigError(f"{where}: the secret is empty")
    return Secret(text)


def _read_limited(path: Path, where: str) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(_SECRET_READ_LIMIT)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None


def _read_secret_file(path: Path, key: str) -> bytes:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if mode & stat.S_IROTH:
        # As ssh does for private keys: a secret every local user can read is not a secret.
        raise ConfigError(
            f"{key}: {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
            f"refusing to use it; run: chmod o-rwx {path}"
        )
    if mode & stat.S_IRGRP:
        logging.getLogger("inbox-guard").warning(
            "%s: %s is readable by its group (mode %04o); consider: chmod 600 %s",
            key,
            path,
            stat.S_IMODE(mode),
            path,
        )
    return _read_limited(path, key)


def _run_secret_command(command: str, key: str, env: Mapping[str, str], timeout: float) -> bytes:
    """Run ``command`` with ``/bin/sh -c``; its stderr is discarded (it may hold the secret)."""
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(env),
            start_new_session=True,  # its own process group, so a timeout kills children too
        )
    except OSError as exc:
        raise ConfigError(f"{key}: cannot run /bin/sh: {exc.strerror or exc}") from None
    with process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise ConfigError(f"{key}: did not finish within {timeout:g} seconds") from None
    status = process.returncode
    if status < 0:
        raise ConfigError(f"{key}: killed by signal {-status}")
    if status != 0:
        hint = {126: " (not executable)", 127: " (command not found)"}.get(status, "")
        raise ConfigError(f"{key}: exited with status {status}{hint}")
    return output
