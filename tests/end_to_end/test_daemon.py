"""`inbox-guard run` as a real subprocess against a real Dovecot."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mail import harmless, risky_payment
from support.servers import MailAccount

CLI = [sys.executable, "-m", "guard"]


def write_config(tmp: Path, acct: MailAccount, extra: str = "", poll: int = 2) -> Path:
    pw = tmp / "imap-password"
    pw.write_text(acct.password + "\n")
    pw.chmod(0o600)
    path = tmp / "config.toml"
    path.write_text(
        "[imap]\n"
        'host = "127.0.0.1"\n'
        f"port = {acct.port}\n"
        'tls = "starttls"\n'
        f"username = {json.dumps(acct.user)}\n"
        f"password_file = {json.dumps(str(pw))}\n"
        f"ca_file = {json.dumps(str(acct.ca_file))}\n"
        "timeout = 5\n"
        "[store]\n"
        f"url = {json.dumps('sqlite:///' + str(tmp / 'guard.sqlite3'))}\n"
        "[schedule]\n"
        f"poll_interval = {poll}\n" + extra
    )
    return path


class Daemon:
    """The daemon process with its stderr collected line by line."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*CLI, "run", "--config", str(config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pred: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log:\n" + "\n".join(self.lines))

    def wait_log(self, text: str, timeout: float = 30.0, after: int = 0) -> int:
        found: list[int] = []

        def pred() -> bool:
            for i, line in enumerate(self.lines[after:], after):
                if text in line:
                    found.append(i)
                    return True
            return False

        self.wait_for(pred, timeout, repr(text))
        return found[0]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self._reader.join(timeout=5)
        return code, time.monotonic() - started


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def keywords(acct: MailAccount, uid: int) -> set[str]:
    return {f for f in acct.flags().get(uid, set()) if f.startswith("$Guard")}


def test_daemon_labels_new_mail_and_stops_cleanly_on_sigterm(
    mailbox: MailAccount, tmp_path: Path, daemons: list[Daemon]
) -> None:
    mailbox.save(harmless(0)[0])
    config = write_config(tmp_path, mailbox)
    d = Daemon(config)
    daemons.append(d)
    d.wait_log("scan: 1 new")

    uid = mailbox.save(risky_payment()[0])  # arrives while the daemon runs
    d.wait_for(lambda: bool(keywords(mailbox, uid)), what="the new risky message labelled")
    assert keywords(mailbox, uid) == {"$GuardHighRisk", "$GuardOffPlatformPayment"}

    code, took = d.stop(signal.SIGTERM)
    assert code == 0
    assert took < 10  # the service contract (systemd TimeoutStopSec), not a speed goal
    assert any("stopped" in line for line in d.lines)
    assert not any("Traceback" in line for line in d.lines)
    # Nothing secret in the log.
    assert mailbox.password not in "\n".join(d.lines)


def test_daemon_recovers_after_dovecot_restart(
    dovecot: Any, mailbox: MailAccount, tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = write_config(tmp_path, mailbox)
    d = Daemon(config)
    daemons.append(d)
    d.wait_log("scan: 0 new")

    dovecot.stop()
    try:
        mark = d.wait_log("scan failed", timeout=30)
        assert "retrying in" in d.lines[mark]
        time.sleep(3)  # a few failed attempts, each one line
    finally:
        dovecot.start()
    uid = mailbox.save(risky_payment()[0])
    d.wait_log("scan recovered", timeout=60, after=mark)
    d.wait_for(lambda: bool(keywords(mailbox, uid)), what="label after recovery")
    failures = [line for line in d.lines if "scan failed" in line]
    assert failures and all(len(line) < 300 for line in failures)
    code, _ = d.stop()
    assert code == 0


def test_daemon_reports_to_systemd_notify_socket(
    mailbox: MailAccount, tmp_path: Path, daemons: list[Daemon]
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    mailbox.save(risky_payment()[0])
    config = write_config(tmp_path, mailbox)
    d = Daemon(
        config,
        env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000", "JOURNAL_STREAM": "1:1"},
    )
    daemons.append(d)
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            seen.append(sock.recv(4096).decode())
        text = "\n".join(seen)
        if "READY=1" in text and "WATCHDOG=1" in text and "1 risky" in text:
            break
    sock.close()
    text = "\n".join(seen)
    assert "READY=1" in text
    assert "WATCHDOG=1" in text
    assert "STATUS=last scan" in text and "1 new, 1 risky, 1 labelled" in text
    # journald form: a priority prefix, no timestamp of our own
    assert any(line.startswith("<6>") for line in d.lines)
    d.stop()


def test_sighup_reloads_and_a_broken_config_keeps_the_old_one(
    mailbox: MailAccount, tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = write_config(tmp_path, mailbox)
    d = Daemon(config)
    daemons.append(d)
    d.wait_log("scan: 0 new")
    good = config.read_text()
    config.write_text(good.replace("[schedule]", "[schedule]\nbogus = 1"))
    d.proc.send_signal(signal.SIGHUP)
    mark = d.wait_log("reload failed")
    assert "schedule.bogus" in d.lines[mark]
    config.write_text(good)
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("configuration reloaded", after=mark)
    uid = mailbox.save(risky_payment()[0])
    d.wait_for(lambda: bool(keywords(mailbox, uid)), what="still scanning after reload")
    assert d.stop()[0] == 0


def test_bad_config_fails_fast_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[imap]\nhost = "127.0.0.1"\nusername = "u"\nport = 0.5\n')
    proc = subprocess.run(
        [*CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "imap.port" in proc.stderr


def test_idle_labels_new_mail_long_before_the_next_poll(
    mailbox: MailAccount, tmp_path: Path, daemons: list[Daemon]
) -> None:
    config = write_config(tmp_path, mailbox, extra="idle = true\n", poll=600)
    d = Daemon(config)
    daemons.append(d)
    d.wait_log("scan: 0 new")
    time.sleep(1.0)  # let the IDLE connection settle in
    uid = mailbox.save(risky_payment()[0])
    # The next poll is 600 s away: only IDLE can have triggered this scan.
    d.wait_for(lambda: bool(keywords(mailbox, uid)), timeout=60, what="IDLE-triggered scan")
    assert any("IDLE: new mail" in line for line in d.lines)
    assert d.stop()[0] == 0


def digest_config(sink: Any) -> str:
    return (
        "[smtp]\n"
        'host = "127.0.0.1"\n'
        f"port = {sink.port}\n"
        'tls = "starttls"\n'
        f"username = {json.dumps(sink.username)}\n"
        'password_file = "smtp-password"\n'
        f"ca_file = {json.dumps(str(sink.ca_file))}\n"
        "timeout = 5\n"
        "[digest]\n"
        'to = "alex@personal.example"\n'
        'from = "guard@work.example"\n'
        'time = "00:00"\n'
        'timezone = "UTC"\n'
    )


def test_digest_missed_at_start_is_sent_once_even_when_smtp_is_down_first(
    mailbox: MailAccount, tmp_path: Path, daemons: list[Daemon], smtp_sink: Any
) -> None:
    (tmp_path / "smtp-password").write_text(smtp_sink.password + "\n")
    (tmp_path / "smtp-password").chmod(0o600)
    smtp_sink.stop()  # down at digest time
    _raw, _ = risky_payment(subject="Landing page budget")
    mailbox.save(_raw)
    config = write_config(tmp_path, mailbox, extra=digest_config(smtp_sink))
    d = Daemon(config)
    daemons.append(d)
    mark = d.wait_log("not sent", timeout=60)
    assert "will retry" in d.lines[mark]
    db = tmp_path / "guard.sqlite3"
    con = sqlite3.connect(db)
    assert con.execute("select status from digest").fetchall() == [("pending",)]
    con.close()

    smtp_sink.start()  # back up: the next poll retries the pending digest
    d.wait_log("sent to alex@personal.example", timeout=60, after=mark)
    time.sleep(5)  # a few more poll cycles: nothing is sent twice
    messages = smtp_sink.messages
    assert len(messages) == 1
    msg = messages[0].message
    assert msg.is_multipart()
    types = {part.get_content_type() for part in msg.walk()}
    assert {"text/plain", "text/html"} <= types
    text = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "Landing page budget" in text and "Landing page budget" in html
    assert d.stop()[0] == 0
    con = sqlite3.connect(db)
    assert con.execute("select status, attempts from digest").fetchall() == [("sent", 2)]
    con.close()
