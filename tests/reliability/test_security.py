"""Security properties: secrets never leak, files are private, TLS is never downgraded."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.mail import risky_payment
from support.servers import MailAccount

CLI = [sys.executable, "-m", "guard"]
SECRET = "Sup3r-Secret-Pa55"  # recognisable in any output, encoded or not


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def config_text(acct: MailAccount, tmp: Path, imap: dict[str, Any], extra: str = "") -> Path:
    base = {
        "host": "127.0.0.1",
        "port": acct.port,
        "tls": "starttls",
        "username": acct.user,
        "ca_file": str(acct.ca_file),
        "timeout": 5,
    }
    base.update(imap)
    lines = ["[imap]", *(f"{k} = {json.dumps(v)}" for k, v in base.items() if v is not None)]
    lines += ["[store]", f"url = {json.dumps('sqlite:///' + str(tmp / 'guard.sqlite3'))}", extra]
    path = tmp / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def secret_file(tmp: Path, value: str = SECRET, mode: int = 0o600) -> Path:
    path = tmp / "imap-password"
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def assert_no_secret(*texts: str, files: tuple[Path, ...] = (), secret: str = SECRET) -> None:
    import base64

    forms = [secret, base64.b64encode(secret.encode()).decode(), secret.encode().hex()]
    blob = "\n".join(texts)
    for path in files:
        if path.exists():
            blob += path.read_bytes().decode("latin-1")
    for form in forms:
        assert form not in blob


@pytest.mark.parametrize(
    "failure",
    ["wrong-password", "server-down", "untrusted-tls", "command-fails", "folder-missing"],
)
def test_secret_never_appears_in_any_output(
    mailbox: MailAccount, tmp_path: Path, failure: str
) -> None:
    mailbox.save(risky_payment()[0])
    imap: dict[str, Any] = {"password_file": str(secret_file(tmp_path))}
    extra_args: list[str] = []
    if failure == "server-down":
        imap["port"] = 1
    elif failure == "untrusted-tls":
        imap.update({"tls": "implicit", "port": mailbox.tls_port, "ca_file": None})
    elif failure == "command-fails":
        imap = {"password_command": f"echo {SECRET}; echo {SECRET} >&2; exit 4"}
    elif failure == "folder-missing":
        # the right password is still a secret: use it, and fail later
        imap["password_file"] = str(secret_file(tmp_path, mailbox.password))
        extra_args = ["--folder", "Nope"]
    config = config_text(mailbox, tmp_path, imap)
    outputs = []
    for command in (
        ["scan", "-v", *extra_args],
        ["doctor"],
        ["scan", "--format", "json", *extra_args],
    ):
        proc = run(*command, "--config", str(config))
        if command[0] == "scan":
            assert proc.returncode != 0
        outputs += [proc.stdout, proc.stderr]
    secret = mailbox.password if failure == "folder-missing" else SECRET
    assert_no_secret(*outputs, files=(tmp_path / "guard.sqlite3",), secret=secret)


def test_secret_not_in_daemon_log_nor_store(mailbox: MailAccount, tmp_path: Path) -> None:
    config = config_text(mailbox, tmp_path, {"password_file": str(secret_file(tmp_path))})
    config.write_text(config.read_text() + "[schedule]\npoll_interval = 2\n")
    proc = subprocess.Popen(
        [*CLI, "run", "-v", "--config", str(config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        import time

        time.sleep(4)  # at least one failed login (wrong password) and its log line
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "login" in err
    assert_no_secret(out, err, files=(tmp_path / "guard.sqlite3",))


def test_group_readable_secret_warns_world_readable_is_refused(
    mailbox: MailAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from guard.config import ConfigError, load_config

    pw = secret_file(tmp_path, mailbox.password, mode=0o640)
    config = load_config(config_text(mailbox, tmp_path, {"password_file": str(pw)}))
    with caplog.at_level(logging.WARNING):
        assert config.imap is not None
        assert config.imap.password().reveal() == mailbox.password
    assert "readable by its group" in caplog.text and "chmod 600" in caplog.text
    pw.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by every user"):
        config.imap.password()


def test_store_and_evidence_are_private(mailbox: MailAccount, tmp_path: Path) -> None:
    mailbox.save(risky_payment()[0])
    state = tmp_path / "state"
    config = config_text(mailbox, tmp_path, {"password_file": str(secret_file(tmp_path))})
    config.write_text(
        config.read_text().replace(str(tmp_path / "guard.sqlite3"), str(state / "guard.sqlite3"))
    )
    secret_file(tmp_path, mailbox.password)
    assert run("scan", "--config", str(config)).returncode == 0
    assert os.stat(state).st_mode & 0o777 == 0o700
    for path in state.iterdir():  # the database, its WAL and lock files
        assert path.stat().st_mode & 0o077 == 0, path


def test_starttls_stripping_is_an_error_not_a_downgrade(gmail: Any, tmp_path: Path) -> None:
    # The Gmail emulation does not offer STARTTLS: exactly what a stripping attacker shows.
    pw = tmp_path / "pw"
    pw.write_text(gmail.password + "\n")
    pw.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        "[imap]\n"
        'host = "127.0.0.1"\n'
        f"port = {gmail.port}\n"
        'tls = "starttls"\n'
        f'username = "{gmail.username}"\n'
        f'password_file = "{pw}"\n'
        "[store]\n"
        f'url = "sqlite:///{tmp_path / "g.sqlite3"}"\n'
    )
    proc = run("scan", "--config", str(config))
    assert proc.returncode == 1
    assert "does not offer STARTTLS" in proc.stderr
    assert gmail.password not in proc.stderr


def test_plaintext_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[imap]\nhost = "imap.example.com"\ntls = "none"\nusername = "u"\n')
    proc = run("scan", "--config", str(config))
    assert proc.returncode == 2
    assert '"none" is only allowed for a loopback host' in proc.stderr
