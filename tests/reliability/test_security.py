"""Security properties: secrets never leak, files are private, TLS is never downgraded."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from support.cli import CLI, run_cli
from support.configs import raw_config, secret_file, write_config
from support.mail import risky_payment
from support.servers import MailAccount

SECRET = "Sup3r-Secret-Pa55"  # recognisable in any output, encoded or not


def imap_secret(tmp: Path, value: str = SECRET, mode: int = 0o600) -> Path:
    return secret_file(tmp, "imap-password", value, mode)


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
    imap: dict[str, Any] = {"timeout": 5, "password_file": str(imap_secret(tmp_path))}
    extra_args: list[str] = []
    if failure == "server-down":
        imap["port"] = 1
    elif failure == "untrusted-tls":
        imap.update({"tls": "implicit", "port": mailbox.tls_port, "ca_file": None})
    elif failure == "command-fails":
        imap = {"timeout": 5, "password_command": f"echo {SECRET}; echo {SECRET} >&2; exit 4"}
    elif failure == "folder-missing":
        # the right password is still a secret: use it, and fail later
        imap["password_file"] = str(imap_secret(tmp_path, mailbox.password))
        extra_args = ["--folder", "Nope"]
    config = write_config(tmp_path, mailbox, imap=imap)
    outputs = []
    for command in (
        ["scan", "-v", *extra_args],
        ["doctor"],
        ["scan", "--format", "json", *extra_args],
    ):
        proc = run_cli(*command, "--config", str(config))
        if command[0] == "scan":
            assert proc.returncode != 0
        outputs += [proc.stdout, proc.stderr]
    secret = mailbox.password if failure == "folder-missing" else SECRET
    assert_no_secret(*outputs, files=(tmp_path / "guard.sqlite3",), secret=secret)


def test_secret_not_in_daemon_log_nor_store(mailbox: MailAccount, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        mailbox,
        imap={"timeout": 5, "password_file": str(imap_secret(tmp_path))},
        schedule={"poll_interval": 2},
    )
    proc = subprocess.Popen(
        [*CLI, "run", "-v", "--config", str(config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    logged = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "login" in line:
                logged.set()  # the failed login (wrong password) has been logged

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        logged.wait(120)  # a generous ceiling for a loaded machine, not a timing goal
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        reader.join(timeout=30)
    err = "".join(lines)
    assert "login" in err
    assert_no_secret(out, err, files=(tmp_path / "guard.sqlite3",))


def test_group_readable_secret_warns_world_readable_is_refused(
    mailbox: MailAccount, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from guard.config import ConfigError, load_config

    pw = imap_secret(tmp_path, mailbox.password, mode=0o640)
    path = write_config(tmp_path, mailbox, imap={"timeout": 5, "password_file": str(pw)})
    config = load_config(path)
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
    config = write_config(
        tmp_path,
        mailbox,
        imap={"timeout": 5, "password_file": str(imap_secret(tmp_path))},
        store={"url": f"sqlite:///{state / 'guard.sqlite3'}"},
    )
    imap_secret(tmp_path, mailbox.password)
    assert run_cli("scan", "--config", str(config)).returncode == 0
    assert os.stat(state).st_mode & 0o777 == 0o700
    for path in state.iterdir():  # the database, its WAL and lock files
        assert path.stat().st_mode & 0o077 == 0, path


def test_starttls_stripping_is_an_error_not_a_downgrade(gmail: Any, tmp_path: Path) -> None:
    # The Gmail emulation does not offer STARTTLS: exactly what a stripping attacker shows.
    config = write_config(
        tmp_path, gmail, f"sqlite:///{tmp_path / 'g.sqlite3'}", imap={"tls": "starttls"}
    )
    proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 1
    assert "does not offer STARTTLS" in proc.stderr
    assert gmail.password not in proc.stderr


def test_plaintext_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    config = raw_config(
        tmp_path, '[imap]\nhost = "imap.example.com"\ntls = "none"\nusername = "u"\n'
    )
    proc = run_cli("scan", "--config", str(config))
    assert proc.returncode == 2
    assert '"none" is only allowed for a loopback host' in proc.stderr
