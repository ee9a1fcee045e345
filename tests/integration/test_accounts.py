"""Several mailboxes in one configuration: one store, per-account state, failures isolated."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.cli import Daemon, run_cli
from support.configs import imap_section, secret_file, smtp_section, write_config
from support.mail import harmless, risky_payment
from support.servers import Dovecot, MailAccount


def accounts_config(
    tmp: Path, dovecot: Dovecot, users: dict[str, str], store_url: str | None = None, **tables: Any
) -> Path:
    """users: account name -> Dovecot user; a user named "!bad" gets a wrong password."""
    secret_file(tmp, "pw", dovecot.password)
    secret_file(tmp, "bad-pw", "not-the-password")
    accounts = [
        {
            "name": name,
            "digest_to": f"{name}@personal.example",
            "imap": imap_section(
                MailAccount(dovecot, user.lstrip("!")), "bad-pw" if user.startswith("!") else "pw"
            ),
        }
        for name, user in users.items()
    ]
    return write_config(tmp, None, store_url, **tables, account=accounts)


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

    proc = run_cli("scan", "--config", str(config), "--format", "json")

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
    again = run_cli("scan", "--config", str(config), "--format", "json", "--account", "fiverr")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["new_messages"] == 1
    found = run_cli("findings", "--config", str(config), "--format", "json")
    threads = [json.loads(line) for line in found.stdout.splitlines()]
    assert sorted(t["account"] for t in threads) == ["fiverr", "upwork"]
    if backend == "sqlite":
        con = sqlite3.connect(tmp_path / "guard.sqlite3")
        rows = con.execute("select account, count(*) from message group by account").fetchall()
        assert sorted(rows) == [("fiverr", 3), ("upwork", 2)]


def test_unknown_account_is_a_usage_error(dovecot: Dovecot, tmp_path: Path) -> None:
    config = accounts_config(tmp_path, dovecot, {"a": dovecot.new_user("a")})
    proc = run_cli("scan", "--config", str(config), "--account", "nope", timeout=120)
    assert proc.returncode == 2 and "no account named 'nope'" in proc.stderr


def test_daemon_guards_several_mailboxes_and_mails_each_digest_to_its_owner(
    dovecot: Dovecot, tmp_path: Path, smtp_sink: Any, daemons: Callable[..., Daemon]
) -> None:
    one, two = dovecot.new_user("one"), dovecot.new_user("two")
    dovecot.save(one, risky_payment(subject="one: deal")[0])
    dovecot.save(two, risky_payment(subject="two: deal")[0])
    config = accounts_config(
        tmp_path,
        dovecot,
        {"one": one, "two": two, "broken": "!" + one},
        schedule={"poll_interval": 2, "max_parallel": 2},
        smtp=smtp_section(tmp_path, smtp_sink, password_file="smtp-password"),
        digest={
            "to": "fallback@personal.example",
            "from": "guard@work.example",
            "time": "00:00",
            "timezone": "UTC",
        },
    )
    daemon = daemons(config)
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
        code = daemon.stop()
    err = daemon.log
    assert code == 0
    broken = [line for line in err.splitlines() if "[broken]" in line and "scan failed" in line]
    assert len(broken) == 1  # a refused login is retried slowly, not in a storm
    assert "[one] scan:" in err and "[two] scan:" in err
