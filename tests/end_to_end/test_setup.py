"""`inbox-guard setup` against a real Dovecot and SMTP server, as "generic IMAP".

The interactive form runs in a real pseudo-terminal (the password prompt reads /dev/tty
without echo); the scripted form with ``--non-interactive``. What setup writes must pass
`doctor` and a real `scan`; Ctrl-C leaves nothing behind; a second run keeps a backup.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time
import tomllib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from support.cli import CLI, environment, run_cli
from support.servers import MailAccount, SmtpSink

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
WRONG = "not-the-password-42"


class Terminal:
    """``inbox-guard ARGS`` on a pseudo-terminal: what it prints, what we type."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a session of its own with the pty as its terminal
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 220, 0, 0))
                os.execve(sys.executable, [*CLI, *args], env)
            finally:
                os._exit(127)
        self.seen = ""  # everything printed so far, ANSI sequences removed
        self.pos = 0  # where the next expect starts looking
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not chunk:
            return False
        self.seen += ANSI.sub("", chunk.decode("utf-8", "replace"))
        return True

    def expect(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Wait for ``pattern`` (a regex) in what is printed after the last match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = rx.search(self.seen, self.pos)
            if found:
                self.pos = found.end()
                return found
            left = deadline - time.monotonic()
            alive = left > 0 and self._read(min(left, 0.5))
            if not alive and not rx.search(self.seen, self.pos):
                tail = self.seen[self.pos :][-1500:]
                raise AssertionError(f"{pattern!r} not printed; after the last match:\n{tail}")

    def answer(self, prompt: str, text: str) -> None:
        self.expect(prompt)
        os.write(self.fd, text.encode() + b"\r")

    def answer_secret(self, prompt: str, text: str) -> None:
        """Type ``text`` once the terminal stopped echoing (getpass flushes what was typed
        before it switched echo off, as a terminal does)."""
        self.expect(prompt)
        deadline = time.monotonic() + 10
        while termios.tcgetattr(self.fd)[3] & termios.ECHO:
            assert time.monotonic() < deadline, "the password prompt kept echoing"
            time.sleep(0.02)
        os.write(self.fd, text.encode() + b"\r")

    def send(self, raw: bytes) -> None:
        os.write(self.fd, raw)

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            self._read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.1) and select.select([self.fd], [], [], 0)[0]:
                    pass
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError("setup did not end:\n" + self.seen[-1500:])
        return self.status

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def _env(home: Path) -> dict[str, str]:
    """A home of the test's own: the default config and state paths land there."""
    return environment(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_STATE_HOME": str(home / ".state"),
            "INBOX_GUARD_CONFIG": None,
            "CREDENTIALS_DIRECTORY": None,
            "TERM": "xterm",
            "COLUMNS": "220",
            "PYTHONUNBUFFERED": "1",
        }
    )


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for term in made:
        term.close()


def _mail(subject: str, body: str, days_ago: float) -> tuple[bytes, datetime]:
    when = datetime.now(UTC) - timedelta(days=days_ago)
    msg = EmailMessage()
    msg["From"] = "Pat Client <pat.client@example.net>"
    msg["To"] = "dev@work.example"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<{abs(hash(subject))}.{days_ago}@client.example>"
    msg.set_content(body)
    return bytes(msg), when


RISKY = (
    "Milestone payment outside Upwork",
    "Upwork takes a big fee from both of us. Let's skip it: I will pay you directly by "
    "PayPal or bank transfer, so we avoid the fees. Send me your PayPal address.",
)
OLD_RISKY = (
    "Old request to pay off the platform",
    "Forget the Upwork fees, I pay you directly with PayPal, send me your PayPal email.",
)
HARMLESS = ("Logo drafts", "Thanks for the drafts, the second one is closest. Talk Thursday.")


@pytest.fixture
def work_mailbox(mailbox: MailAccount) -> MailAccount:
    """A mailbox with a risky and a harmless message from this week and a risky one of
    30 days ago (outside the dry run's 7 days)."""
    with mailbox.session() as client:
        for subject, body, days in (
            (*RISKY, 1),
            (*HARMLESS, 2),
            (*OLD_RISKY, 30),
        ):
            raw, when = _mail(subject, body, days)
            client.append("INBOX", raw, msg_time=when)
    return mailbox


def _secret_file(tmp: Path, name: str, value: str) -> Path:
    path = tmp / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _generic_answers(
    term: Terminal, acct: MailAccount, *, password: str, port: int | None = None
) -> None:
    term.answer(r"Work address.*: ", "dev@work.example")
    term.answer(r"Provider.*: ", "generic")
    term.answer(r"IMAP server.*: ", "127.0.0.1")
    term.answer(r"TLS .*: ", "starttls")
    term.answer(r"IMAP port.*: ", str(port or acct.port))
    term.answer(r"CA file.*: ", str(acct.ca_file))
    term.answer(r"Login name.*: ", acct.user)
    term.answer_secret(r"Password for .*: ", password)


def test_interactive_setup_of_a_generic_imap_server(
    work_mailbox: MailAccount,
    smtp_sink: SmtpSink,
    home: Path,
    tmp_path: Path,
    terminals: list[Terminal],
) -> None:
    acct = work_mailbox
    env = _env(home)
    config = home / ".config" / "inbox-guard" / "config.toml"
    term = Terminal(["setup"], env)
    terminals.append(term)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    _generic_answers(term, acct, password=WRONG, port=closed)  # two typos first
    term.answer(r"systemd credential.*: ", "file")
    term.expect(r"FAIL tcp: 127\.0\.0\.1:\d+: .*refused")
    term.expect(r"hint: check imap.port")
    # the server step is asked again, with what was typed as the defaults
    term.answer(r"IMAP server \(127\.0\.0\.1\): ", "")
    term.answer(r"TLS .*\(starttls\): ", "")
    term.answer(rf"IMAP port \({closed}\): ", str(acct.port))
    term.answer(r"CA file.*\(/.*cert\.pem\): ", "")
    term.answer(r"Login name \(test-.*\): ", "")
    term.expect(r"FAIL login: .*AUTHENTICATIONFAILED")
    term.expect(r"hint: check imap.username and the password")
    term.answer_secret(r"Password for .*: ", acct.password)  # only the password is asked again
    term.expect(r"ok   login: logged in as")
    term.expect(r"ok   folder Sent: ")
    term.answer(r"Folders to guard.*\(INBOX, Sent\): ", "")
    term.expect(r"Labels: keywords\+folders: PERMANENTFLAGS allows custom keywords")
    term.answer(r"Label mode.*: ", "")
    term.answer(r"daily digest to.*: ", "me@personal.example")
    term.answer(r"Digest time.*: ", "07:30")
    term.answer(r"Digest sender address.*: ", "")
    term.answer(r"SMTP server.*\(127\.0\.0\.1\): ", "")
    term.answer(r"SMTP TLS.*: ", "starttls")
    term.answer(r"SMTP port.*: ", str(smtp_sink.port))
    term.answer(r"SMTP login name.*: ", smtp_sink.username)
    term.answer_secret(r"SMTP password for .*: ", smtp_sink.password)
    term.expect(r"ok   smtp: .*accepted the login")
    term.expect(r"2 message\(s\) read, 1 risky, 1 would be labelled")  # not the 30-day-old one
    table = term.expect(r"┃ Folder(?s:.*?)└[^\n]*\n")
    assert "Milestone payment outside Upwork │ high │ Guard/High risk" in table.group(0)
    assert "Old request to pay" not in table.group(0)  # 30 days old: outside the 7 days
    assert "Logo drafts" not in table.group(0)
    term.answer(r"Write .*config\.toml\?.*: ", "y")
    term.answer(r"user service now.*: ", "n")
    term.answer(r"system service instead.*: ", "n")
    assert term.wait() == 0, term.seen[-2000:]
    transcript = term.seen
    for secret in (acct.password, WRONG, smtp_sink.password):
        assert secret not in transcript  # typed without echo, never printed

    assert _mode(config) == 0o600 and _mode(config.parent) == 0o700
    password = config.parent / "imap-password"
    smtp_password = config.parent / "smtp-password"
    assert password.read_text() == acct.password + "\n" and _mode(password) == 0o600
    assert smtp_password.read_text() == smtp_sink.password + "\n"
    assert _mode(smtp_password) == 0o600
    text = config.read_text()
    assert acct.password not in text and smtp_sink.password not in text
    data = tomllib.loads(text)
    assert data["imap"] == {
        "host": "127.0.0.1",
        "tls": "starttls",
        "port": acct.port,
        "username": acct.user,
        "password_file": "imap-password",
        "ca_file": str(acct.ca_file),
    }
    assert "labels" not in data and "folders" not in data["imap"]  # defaults stay out
    assert data["digest"] == {
        "to": "me@personal.example",
        "from": "dev@work.example",
        "time": "07:30",
    }
    assert data["smtp"]["password_file"] == "smtp-password"
    assert text.startswith("# inbox-guard configuration, written by `inbox-guard setup`")
    leftovers = sorted(p.name for p in config.parent.iterdir())
    assert leftovers == ["config.toml", "imap-password", "smtp-password"]

    doctor = run_cli("doctor", env=_env(home), timeout=120)  # the default path is found
    assert doctor.returncode == 0, doctor.stdout
    assert "ok   smtp:" in doctor.stdout
    scan = run_cli("scan", "--format", "json", env=_env(home), timeout=120)
    assert scan.returncode == 0, scan.stderr
    assert '"labelled": ' in scan.stdout and '"labelled": 0' not in scan.stdout
    flagged = [uid for uid, flags in acct.flags().items() if "$GuardHighRisk" in flags]
    assert 1 in flagged  # the risky message of this week, labelled on the server


def test_ctrl_c_midway_leaves_nothing_behind(
    work_mailbox: MailAccount, home: Path, terminals: list[Terminal]
) -> None:
    acct = work_mailbox
    config = home / ".config" / "inbox-guard" / "config.toml"
    tmp = home.parent / "tmp"
    tmp.mkdir()
    term = Terminal(["setup"], {**_env(home), "TMPDIR": str(tmp)})
    terminals.append(term)
    _generic_answers(term, acct, password=acct.password)
    term.answer(r"systemd credential.*: ", "file")
    term.expect(r"ok   login:")
    term.expect(r"Folders to guard.*: ")
    term.send(b"\x03")  # Ctrl-C at the folder question, after the secret was staged
    assert term.wait() == 130
    assert not (home / ".config").exists()  # not even the directory setup would have made
    assert not list(tmp.iterdir())  # the staged secret and preview store are gone too
    assert not config.exists()


def _setup(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "setup", "--non-interactive", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(home),
        timeout=120,
        check=False,
    )


def _generic_flags(acct: MailAccount, config: Path) -> list[str]:
    return [
        "--config",
        str(config),
        "--address",
        "dev@work.example",
        "--imap-host",
        "127.0.0.1",
        "--imap-tls",
        "starttls",
        "--imap-port",
        str(acct.port),
        "--ca-file",
        str(acct.ca_file),
        "--username",
        acct.user,
    ]


def test_non_interactive_names_the_missing_value(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "conf" / "config.toml"
    proc = _setup(home, "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr == "inbox-guard: error: missing value: --address (Work address)\n"
    proc = _setup(home, "--config", str(config), "--address", "dev@work.example")
    assert proc.returncode == 2
    assert proc.stderr.startswith("inbox-guard: error: missing value: --provider")
    assert proc.stderr.count("\n") == 1
    assert not config.parent.exists()


def test_non_interactive_setup_from_a_script(
    work_mailbox: MailAccount, home: Path, tmp_path: Path
) -> None:
    acct = work_mailbox
    config = tmp_path / "conf" / "config.toml"
    flags = _generic_flags(acct, config)
    wrong = _setup(home, *flags, stdin=WRONG + "\n")  # the password from standard input
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("inbox-guard: error: live check failed: login: ")
    assert "(hint: check imap.username" in wrong.stderr and wrong.stderr.count("\n") == 1
    assert WRONG not in wrong.stdout + wrong.stderr
    assert not config.parent.exists()

    source = _secret_file(tmp_path, "given", acct.password)
    proc = _setup(home, *flags, "--password-file", str(source), "--label-mode", "folders")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "would be labelled" in proc.stdout and "Milestone payment outside" in proc.stdout
    data = tomllib.loads(config.read_text())
    assert data["labels"] == {"mode": "folders"} and "digest" not in data
    assert (config.parent / "imap-password").read_text() == acct.password + "\n"
    assert _mode(config.parent / "imap-password") == 0o600
    doctor = run_cli("doctor", "--config", str(config), env=_env(home), timeout=120)
    assert doctor.returncode == 0, doctor.stdout
    assert "ok   labels: folders" in doctor.stdout


def test_rerun_edits_the_file_and_keeps_a_backup(
    work_mailbox: MailAccount, home: Path, tmp_path: Path
) -> None:
    acct = work_mailbox
    config = tmp_path / "conf" / "config.toml"
    source = _secret_file(tmp_path, "given", acct.password)
    first = _setup(
        home, *_generic_flags(acct, config), "--password-file", str(source), "--skip-preview"
    )
    assert first.returncode == 0, first.stderr
    with config.open("a") as handle:  # a key setup does not manage, added by hand
        handle.write('\n[schedule]\npoll_interval = "10m"\n')
    before = config.read_text()
    # only the label mode changes; the rest (and the password) comes from the file
    again = _setup(home, "--config", str(config), "--label-mode", "keywords", "--skip-preview")
    assert again.returncode == 0, again.stderr
    backups = list(config.parent.glob("config.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == before
    assert "previous file is kept as" in again.stdout
    data = tomllib.loads(config.read_text())
    assert data["labels"] == {"mode": "keywords"}
    assert data["schedule"] == {"poll_interval": "10m"}
    assert data["imap"]["port"] == acct.port and data["imap"]["password_file"] == "imap-password"

    added = _setup(
        home,
        "--config",
        str(config),
        "--account",
        "second",
        *_generic_flags(acct, config)[2:],
        "--password-file",
        str(source),
        "--skip-preview",
    )
    assert added.returncode == 0, added.stderr
    data = tomllib.loads(config.read_text())
    assert [a["name"] for a in data["account"]] == ["default", "second"] and "imap" not in data
    assert data["account"][1]["imap"]["password_file"] == "imap-password-second"
    doctor = run_cli("doctor", "--config", str(config), env=_env(home), timeout=120)
    assert doctor.returncode == 0, doctor.stdout
    assert "[second] login" in doctor.stdout


def test_credential_secret_and_the_user_service(
    work_mailbox: MailAccount, home: Path, tmp_path: Path
) -> None:
    acct = work_mailbox
    config = tmp_path / "conf" / "config.toml"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    fake = bin_dir / "systemctl"  # records what setup asks of systemd
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    source = _secret_file(tmp_path, "given", acct.password)
    proc = subprocess.run(
        [
            *CLI,
            "setup",
            "--non-interactive",
            *_generic_flags(acct, config),
            "--password-file",
            str(source),
            "--secret-store",
            "credential",
            "--skip-preview",
            "--service",
            "user",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**_env(home), "PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    credential = home / ".config" / "credstore" / "imap-password"
    assert credential.read_text() == acct.password + "\n" and _mode(credential) == 0o600
    data = tomllib.loads(config.read_text())
    assert not {"password_file", "password_command"} & set(data["imap"])  # by credential
    assert log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now inbox-guard",
    ]
    unit = home / ".config" / "systemd" / "user" / "inbox-guard.service"
    assert "LoadCredential=imap-password:%E/credstore/imap-password" in unit.read_text()
    drop_in = unit.parent / "inbox-guard.service.d" / "setup.conf"
    assert f'Environment="INBOX_GUARD_CONFIG={config}"' in drop_in.read_text()
    assert 'loginctl enable-linger "$USER"' in proc.stdout
    doctor = run_cli(  # as the unit runs it: the secret in $CREDENTIALS_DIRECTORY
        "doctor",
        "--config",
        str(config),
        timeout=120,
        env={**_env(home), "CREDENTIALS_DIRECTORY": str(credential.parent)},
    )
    assert doctor.returncode == 0, doctor.stdout


def test_a_file_the_guard_refuses_is_not_edited(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[imap]\nhost = "imap.example.org"\nusername = "me"\ncolour = "red"\n')
    before = config.read_text()
    proc = _setup(home, "--config", str(config), "--address", "me@example.org")
    assert proc.returncode == 2
    assert "imap.colour" in proc.stderr and "fix or move the file first" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert config.read_text() == before and sorted(tmp_path.iterdir()) == [config, home]


def test_the_written_file_keeps_hostile_values_intact(tmp_path: Path) -> None:
    """Values typed by the user or kept from the old file are TOML-escaped, never spliced."""
    from guard.cli import setup_steps as steps
    from guard.config.providers import provider_named

    odd = 'me"\\x\x7f\u202e\U0001f600\n[evil]'
    raw = {"schedule": {"poll_interval": "5m"}, "policy": {"rules": [odd]}}
    plan = steps.Plan(
        config_path=tmp_path / "config.toml",
        account=None,
        address="me@example.org",
        provider=provider_named("generic"),
        imap=steps.ServerAnswers(host="127.0.0.1", port=993, tls="implicit", username=odd),
        label_mode="folders",
    )
    plan.imap.kept = {"password_command": odd}
    doc = steps.build_doc(raw, plan, None, None)
    text = steps.render_toml(doc, address="me@example.org")
    data = tomllib.loads(text)
    assert data["imap"] == {"host": "127.0.0.1", "username": odd, "password_command": odd}
    assert data["policy"]["rules"] == [odd] and data["schedule"] == {"poll_interval": "5m"}
    assert data["labels"] == {"mode": "folders"} and "evil" not in data
    plan.config_path.write_text(text)  # the next run finds the address again
    assert steps.noted_address(plan.config_path) == "me@example.org"
