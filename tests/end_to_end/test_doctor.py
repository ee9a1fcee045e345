"""`inbox-guard doctor` against a real Dovecot: one line per check, hints on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.servers import MailAccount
from test_daemon import write_config

CLI = [sys.executable, "-m", "guard"]


def doctor(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "doctor", "--config", str(config)], capture_output=True, text=True, timeout=120
    )


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
    assert out.rstrip().endswith("all checks passed")


def test_doctor_names_the_failure_and_a_fix(mailbox: MailAccount, tmp_path: Path) -> None:
    config = write_config(tmp_path, mailbox)
    (tmp_path / "imap-password").write_text("wrong-password-123\n")
    proc = doctor(config)
    assert proc.returncode == 1
    assert "FAIL login:" in proc.stdout and "hint: check imap.username" in proc.stdout
    assert "wrong-password-123" not in proc.stdout
    assert "ok   database:" in proc.stdout  # the checks that do not depend on login still run


def test_doctor_stops_at_dns(mailbox: MailAccount, tmp_path: Path) -> None:
    config = write_config(tmp_path, mailbox)
    config.write_text(config.read_text().replace('"127.0.0.1"', '"mail.no-such-host.invalid"'))
    proc = doctor(config)
    assert proc.returncode == 1
    assert "FAIL dns: mail.no-such-host.invalid" in proc.stdout
    assert "login" not in proc.stdout


def test_doctor_reports_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[imap]\nhost = 1\n")
    proc = doctor(config)
    assert proc.returncode == 1
    assert "FAIL config:" in proc.stdout and "imap.host" in proc.stdout
