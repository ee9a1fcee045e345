"""Several mailboxes in one configuration: one store, per-account state, failures isolated."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.mail import harmless, risky_payment
from support.servers import Dovecot

CLI = [sys.executable, "-m", "guard"]


def accounts_config(
    tmp: Path,
    dovecot: Dovecot,
    users: dict[str, str],
    store_url: str | None = None,
    extra: str = "",
) -> Path:
    """users: account name -> Dovecot user; a user named "!bad" gets a wrong password."""
    good = tmp / "pw"
    good.write_text(dovecot.password + "\n")
    bad = tmp / "bad-pw"
    bad.write_text("not-the-password\n")
    for f in (good, bad):
        f.chmod(0o600)
    url = store_url or f"sqlite:///{tmp / 'guard.sqlite3'}"
    parts = [f"[store]\nurl = {json.dumps(url)}\n", extra]
    for name, user in users.items():
        wrong = user.startswith("!")
        parts.append(
            "[[account]]\n"
            f'name = "{name}"\n'
            f'digest_to = "{name}@personal.example"\n'
            "[account.imap]\n"
            'host = "127.0.0.1"\n'
            f"port = {dovecot.port}\n"
            'tls = "starttls"\n'
            f"username = {json.dumps(user.lstrip('!'))}\n"
            f'password_file = "{"bad-pw" if wrong else "pw"}"\n'
            f"ca_file = {json.dumps(str(dovecot.ca_file))}\n"
        )
    path = tmp / "config.toml"
    path.write_text("\n".join(parts))
    return path


def keywords(dovecot: Dovecot, user: str) -> dict[int, set[str]]:
    return {u: {f for f in fl if f.startswith("$Guard")} for u, fl in dovecot.flags(user).items()}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_mailboxes_and_a_failing_one(
    dovecot: Dovecot, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    upwork, fiverr = dovecot.new_user("upwork"), dovecot.new_user("fiverr")
    dovecot.save(upwork, risky_payment(subject="upwork deal")[0])
    dovecot.save(upwork, harmless(0)[0])
    dovecot.save(fiverr, harmless(1)[0])
    dovecot.save(fiverr, risky_payment(subject="fiverr deal")[0])
    config = accounts_config(
        tmp_path, dovecot, {"upwork": upwork, "broken": "!" + upwork, "fiverr": fiverr}, url
    )

    proc = subprocess.run(
        [*CLI, "scan", "--config", str(config), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 1  # one mailbox failed ...
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and "[broken]" in errors[0] and "login" in errors[0]
    results = {r["account"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == {"upwork", "fiverr"}  # ... and did not stop the others
    assert results["upwork"]["new_messages"] == 2 and results["upwork"]["risky"] == 1
    assert results["fiverr"]["new_messages"] == 2 and results["fiverr"]["risky"] == 1
    assert keywords(dovecot, upwork)[1] == {"$GuardHighRisk", "$GuardOffPlatformPayment"}
    assert keywords(dovecot, fiverr)[2] == {"$GuardHighRisk", "$GuardOffPlatformPayment"}
    assert not keywords(dovecot, upwork)[2] and not keywords(dovecot, fiverr)[1]

    # Per-account state: a second scan of one account fetches nothing, and the other
    # account's new mail is picked up without re-reading the first.
    dovecot.save(fiverr, harmless(2)[0])
    again = subprocess.run(
        [*CLI, "scan", "--config", str(config), "--format", "json", "--account", "fiverr"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["new_messages"] == 1
    found = subprocess.run(
        [*CLI, "findings", "--config", str(config), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    threads = [json.loads(line) for line in found.stdout.splitlines()]
    assert sorted(t["account"] for t in threads) == ["fiverr", "upwork"]
    if backend == "sqlite":
        con = sqlite3.connect(tmp_path / "guard.sqlite3")
        rows = con.execute("select account, count(*) from message group by account").fetchall()
        assert sorted(rows) == [("fiverr", 3), ("upwork", 2)]


def test_unknown_account_is_a_usage_error(dovecot: Dovecot, tmp_path: Path) -> None:
    config = accounts_config(tmp_path, dovecot, {"a": dovecot.new_user("a")})
    proc = subprocess.run(
        [*CLI, "scan", "--config", str(config), "--account", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no account named 'nope'" in proc.stderr


def test_daemon_guards_several_mailboxes_and_mails_each_digest_to_its_owner(
    dovecot: Dovecot, tmp_path: Path, smtp_sink: Any
) -> None:
    one, two = dovecot.new_user("one"), dovecot.new_user("two")
    (tmp_path / "smtp-pw").write_text(smtp_sink.password + "\n")
    (tmp_path / "smtp-pw").chmod(0o600)
    extra = (
        "[schedule]\npoll_interval = 2\nmax_parallel = 2\n"
        "[smtp]\n"
        'host = "127.0.0.1"\n'
        f"port = {smtp_sink.port}\n"
        'tls = "starttls"\n'
        f'username = "{smtp_sink.username}"\n'
        'password_file = "smtp-pw"\n'
        f"ca_file = {json.dumps(str(smtp_sink.ca_file))}\n"
        "[digest]\n"
        'to = "fallback@personal.example"\n'
        'from = "guard@work.example"\n'
        'time = "00:00"\n'
        'timezone = "UTC"\n'
    )
    dovecot.save(one, risky_payment(subject="one: deal")[0])
    dovecot.save(two, risky_payment(subject="two: deal")[0])
    config = accounts_config(
        tmp_path, dovecot, {"one": one, "two": two, "broken": "!" + one}, extra=extra
    )
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True
    )
    try:
        messages = smtp_sink.wait_for(2, timeout=60)
        recipients = sorted(r for m in messages for r in m.rcpt_tos)
        assert recipients == ["one@personal.example", "two@personal.example"]
        by_rcpt = {m.rcpt_tos[0]: m.message for m in messages}
        one_text = by_rcpt["one@personal.example"].get_body(preferencelist=("plain",))
        assert "one: deal" in one_text.get_content() and "two: deal" not in one_text.get_content()
        # New mail in the second mailbox is labelled while "broken" keeps failing.
        uid = dovecot.save(two, risky_payment(subject="two: again")[0])
        end = time.monotonic() + 60
        while time.monotonic() < end and not keywords(dovecot, two).get(uid):
            time.sleep(0.2)
        assert keywords(dovecot, two).get(uid), "second mailbox not labelled"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    broken = [line for line in err.splitlines() if "[broken]" in line and "scan failed" in line]
    assert len(broken) == 1  # a refused login is retried slowly, not in a storm
    assert "[one] scan:" in err and "[two] scan:" in err
