"""One config writer for the tests that scan a real Dovecot mailbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.servers import MailAccount


def write_config(
    tmp: Path, acct: MailAccount, store_url: str | None = None, **sections: dict[str, Any]
) -> Path:
    """``tmp/config.toml`` for ``acct`` over STARTTLS with its password in a 0600 file and
    the store in ``tmp`` (or ``store_url``). ``sections`` add TOML tables; an ``imap`` one
    is merged into the connection settings."""
    pw = tmp / "imap-password"
    pw.write_text(acct.password + "\n")
    pw.chmod(0o600)
    imap: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": acct.port,
        "tls": "starttls",
        "username": acct.user,
        "password_file": str(pw),
        "ca_file": str(acct.ca_file),
        **sections.pop("imap", {}),
    }
    doc = {"imap": imap, "store": {"url": store_url or f"sqlite:///{tmp / 'guard.sqlite3'}"}}
    doc.update(sections)
    lines: list[str] = []
    for name, values in doc.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path = tmp / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
