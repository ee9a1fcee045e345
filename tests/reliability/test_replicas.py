"""Several daemons on one PostgreSQL store: each mailbox owned once, taken over on a death.

Part of the fault suite: the moment of the kill is seeded (one seed in ``make test``, more
with ``INBOX_GUARD_SOAK=1``).

Real PostgreSQL, real Dovecot (one user per account), real daemons as subprocesses, each
with a state directory of its own (as on separate machines). What a user would check is
read back over IMAP and from the database.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.cli import Daemon, run_cli
from support.configs import imap_section, secret_file, smtp_section, write_config
from support.mail import harmless, risky_payment
from support.servers import Dovecot, MailAccount

PAYMENT_FOLDER = "Guard/Off-platform payment"
LEASE = 6  # seconds: short, so a takeover is quick to see


def config_for(
    tmp: Path, dovecot: Dovecot, users: dict[str, str], url: str, smtp_sink: Any
) -> Path:
    secret_file(tmp, "pw", dovecot.password)
    accounts = [
        {
            "name": name,
            "digest_to": f"{name}@personal.example",
            "imap": imap_section(MailAccount(dovecot, user), "pw"),
        }
        for name, user in users.items()
    ]
    return write_config(
        tmp,
        None,
        url,
        store={"lease": LEASE},
        schedule={"poll_interval": 2, "max_parallel": 4},
        smtp=smtp_section(tmp, smtp_sink, password_file="smtp-password"),
        digest={
            "to": "fallback@personal.example",
            "from": "guard@work.example",
            "time": "00:00",
            "timezone": "UTC",
        },
        account=accounts,
    )


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def copies(dovecot: Dovecot, user: str) -> Counter[bytes]:
    """Message-ID -> number of copies in the payment label folder."""
    if PAYMENT_FOLDER not in dovecot.mailboxes(user):
        return Counter()
    found: Counter[bytes] = Counter()
    for raw in dovecot.messages(user, PAYMENT_FOLDER).values():
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                found[line.split(b":", 1)[1].strip()] += 1
    return found


def start(config: Path, tmp: Path, n: int, daemons: Callable[..., Daemon]) -> Daemon:
    state = tmp / f"machine-{n}"
    state.mkdir(exist_ok=True)
    return daemons(config, env={"XDG_STATE_HOME": str(state)})


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"no {what} within {timeout:g} s")
        time.sleep(0.2)


@pytest.mark.seeds(fast=1, soak=5)
def test_three_daemons_share_twenty_mailboxes_and_survive_a_kill_and_a_stop(
    seed: int,
    dovecot: Dovecot,
    postgres_url: str,
    tmp_path: Path,
    smtp_sink: Any,
    daemons: Callable[..., Daemon],
) -> None:
    rng = random.Random(f"replicas-{seed}")
    names = [f"m{i:02d}" for i in range(20)]
    users = {name: dovecot.new_user(name) for name in names}
    sent: dict[str, list[bytes]] = {name: [] for name in names}
    risky: dict[str, int] = dict.fromkeys(names, 0)

    def deliver(count: int) -> None:
        for _ in range(count):
            name = rng.choice(names)
            if rng.random() < 0.4:
                raw, _ = risky_payment(subject=f"{name} deal", sender=f"c{rng.randint(1, 9)}@x.ex")
                risky[name] += 1
            else:
                raw, _ = harmless(rng.randint(0, 5), subject=f"{name} notes")
            dovecot.save(users[name], raw)
            sent[name].append(raw)

    deliver(30)
    config = config_for(tmp_path, dovecot, users, postgres_url, smtp_sink)
    # all three at the same moment, on an empty database: one creates the schema
    group = [start(config, tmp_path, n, daemons) for n in range(3)]

    def recorded() -> int:
        return int(query(postgres_url, "SELECT count(*) FROM message")[0][0])

    def owned() -> dict[str, str]:
        try:
            rows = query(
                postgres_url, "SELECT account, owner FROM account_lease WHERE expires_at > now()"
            )
        except sa.exc.ProgrammingError:  # the daemons have not created the schema yet
            return {}
        return {a: o for a, o in rows if o}

    def balanced() -> bool:
        # every mailbox owned, about a third each (the first daemon up takes everything
        # and hands back what is above its share once it sees the others)
        per_daemon = Counter(owned().values())
        return sum(per_daemon.values()) == len(names) and sorted(per_daemon.values()) == [6, 7, 7]

    wait_until(balanced, 60, "mailboxes shared out")
    listed = json.loads(
        run_cli("replicas", "--config", str(config), "--format", "json", check=True).stdout
    )

    def logs() -> str:  # shown when the sharing is wrong, to tell which daemon stalled
        return "\n\n".join(d.log for d in group)

    assert len(listed["daemons"]) == 3 and listed["not_owned"] == [], logs()
    assert sorted(a for d in listed["daemons"] for a in d["accounts"]) == names
    doctor = run_cli("doctor", "--config", str(config))
    assert "daemons: 3 running" in doctor.stdout, doctor.stdout + logs()
    deliver(20)
    # the cut point: at a seeded moment while the daemons work through the new mail
    time.sleep(rng.uniform(0.0, 4.0))

    # one machine dies (SIGKILL), another is stopped (SIGTERM), while mail keeps coming
    victim, stopped, survivor = rng.sample(group, 3)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    assert stopped.stop(signal.SIGTERM) == 0
    killed_at = time.monotonic()
    deliver(30)
    wait_until(
        lambda: len(owned()) == len(names) and len(set(owned().values())) == 1,
        60,
        "takeover by the survivor",
    )
    took = time.monotonic() - killed_at
    assert took < LEASE * 3, f"takeover took {took:.1f} s"
    wait_until(lambda: recorded() == sum(map(len, sent.values())), 90, "message recorded")
    wait_until(
        lambda: query(postgres_url, "SELECT count(*) FROM message WHERE label_pending")[0][0] == 0,
        60,
        "labels written",
    )
    wait_until(
        lambda: (
            query(postgres_url, "SELECT count(*) FROM digest WHERE status IN ('sent', 'empty')")[0][
                0
            ]
            == len(names)
        ),
        60,
        "digest settled for every mailbox",
    )
    assert survivor.stop() == 0

    # every message recorded once, in its folder; labelled once; one copy per label folder
    rows = query(postgres_url, "SELECT account, folder, uid FROM message")
    assert len(rows) == len(set(rows)) == sum(map(len, sent.values()))
    for name in names:
        assert sum(1 for a, *_ in rows if a == name) == len(sent[name])
        assert all(n == 1 for n in copies(dovecot, users[name]).values())
        assert len(copies(dovecot, users[name])) == risky[name]
    # exactly one digest per mailbox, across the three daemons: mailed once when it had
    # something to say (an empty one is kept as a record, not mailed)
    digests = query(postgres_url, "SELECT account, status FROM digest")
    assert sorted(a for a, _s in digests) == names
    assert Counter(r for m in smtp_sink.messages for r in m.rcpt_tos) == Counter(
        f"{a}@personal.example" for a, status in digests if status == "sent"
    )
    replicas = run_cli("replicas", "--config", str(config), check=True)
    assert "no daemon is running" in replicas.stdout  # the last one handed back its leases


def test_a_second_daemon_on_a_sqlite_store_is_refused(
    dovecot: Dovecot, tmp_path: Path, daemons: Callable[..., Daemon]
) -> None:
    user = dovecot.new_user("solo")
    secret_file(tmp_path, "pw", dovecot.password)
    config = write_config(
        tmp_path,
        None,
        None,
        schedule={"poll_interval": 2},
        account=[{"name": "solo", "imap": imap_section(MailAccount(dovecot, user), "pw")}],
    )
    first = daemons(config)
    first.wait_log("scan:", 30)
    second = daemons(config)
    assert second.proc.wait(30) == 1
    second._reader.join(5)
    assert "another inbox-guard daemon is running on this store" in second.log
    assert len([line for line in second.lines if line.strip()]) == 1 or "one daemon per" in (
        second.log
    )
    assert first.stop() == 0
