"""`inbox-guard doctor` against a real Dovecot: one line per check, hints on failure."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from pathlib import Path

from support.cli import run_cli
from support.configs import raw_config, write_config
from support.servers import MailAccount


def doctor(config: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("doctor", "--config", str(config), timeout=120)


def test_doctor_on_a_healthy_setup(mailbox: MailAccount, tmp_path: Path) -> None:
    proc = doctor(write_config(tmp_path, mailbox))
    out = proc.stdout
    assert proc.returncode == 0, out
    for name in ("config", "rules", "imap secret", "dns", "tcp", "tls", "login", "database"):
        assert f"ok   {name}:" in out, name
    assert "ok   folder INBOX:" in out and "ok   folder Sent:" in out
    assert "keywords+folders: PERMANENTFLAGS allows custom keywords" in out
    assert "STARTTLS, certificate verified" in out
    assert mailbox.password not in out + proc.stderr
    assert "ok   imap secret: password found\n" in out
    assert "characters" not in out  # not even the secret's length
    assert out.rstrip().endswith("all checks passed")


def test_doctor_names_the_failure_and_a_fix(mailbox: MailAccount, tmp_path: Path) -> None:
    config = write_config(tmp_path, mailbox)
    (tmp_path / "imap-password").write_text("wrong-password-123\n")
    proc = doctor(config)
    assert proc.returncode == 1
    assert "FAIL login:" in proc.stdout and "hint: check imap.username" in proc.stdout
    assert "wrong-password-123" not in proc.stdout
    assert "ok   database:" in proc.stdout  # the checks that do not depend on login still run
    # the server's reply as text, on one line: not Python's repr of the bytes
    line = next(x for x in proc.stdout.splitlines() if x.startswith("FAIL login:"))
    assert line.endswith(": [AUTHENTICATIONFAILED] Authentication failed."), line
    assert "b'" not in line and '"b' not in line and "\\" not in line
    assert "(18 characters)" not in proc.stdout


def test_doctor_without_tls_says_no_certificate_was_verified(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    config = write_config(tmp_path, mailbox, imap={"tls": "none"})
    proc = doctor(config)
    assert proc.returncode == 0, proc.stdout
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ok   tls:"))
    assert "no TLS" in line and "no certificate to verify" in line
    assert "certificate verified" not in line


def test_doctor_stops_at_dns(mailbox: MailAccount, tmp_path: Path) -> None:
    config = write_config(tmp_path, mailbox, imap={"host": "mail.no-such-host.invalid"})
    proc = doctor(config)
    assert proc.returncode == 1
    assert "FAIL dns: mail.no-such-host.invalid" in proc.stdout
    assert "login" not in proc.stdout


def test_doctor_reports_a_broken_config(tmp_path: Path) -> None:
    config = raw_config(tmp_path, "[imap]\nhost = 1\n")
    proc = doctor(config)
    assert proc.returncode == 1
    assert "FAIL config:" in proc.stdout and "imap.host" in proc.stdout


def test_a_crafted_login_reply_is_shown_as_one_clean_line(
    mailbox: MailAccount, tmp_path: Path
) -> None:
    """A server (or a man in the middle on a plain connection) chooses the text of its NO
    reply: escape sequences, bidi overrides and non-ASCII come back decoded and harmless."""
    reply = "[AUTHENTICATIONFAILED] Bad \x1b[31mpass\x1b[0m \u202eword ünd \\x41 'quote'"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        thread = threading.Thread(target=_refuse_login, args=(server, reply), daemon=True)
        thread.start()
        config = write_config(tmp_path, mailbox, imap={"tls": "none", "port": port})
        proc = doctor(config)
        thread.join(10)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("FAIL login:"))
    said = line.split(f"127.0.0.1:{port}: ", 1)[1]
    assert said == "[AUTHENTICATIONFAILED] Bad [31mpass [0m word ünd \\x41 'quote'", line
    assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout


def _refuse_login(server: socket.socket, reply: str) -> None:
    server.settimeout(30)
    for _ in range(2):  # doctor's TCP check connects and hangs up first, then it logs in
        conn, _addr = server.accept()
        with contextlib.suppress(OSError), conn, conn.makefile("rb") as lines:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] test server ready\r\n")
            for raw in lines:
                tag, _, command = raw.decode().partition(" ")
                if command.upper().startswith("LOGIN"):
                    conn.sendall(tag.encode() + b" NO " + reply.encode() + b"\r\n")
                    return
                if command.upper().startswith("CAPABILITY"):
                    conn.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
                conn.sendall(tag.encode() + b" OK done\r\n")
