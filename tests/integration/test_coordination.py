"""Coordination on a real PostgreSQL: schema creation by many at once, advisory locks,
leases by the database's clock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa
from support.db import as_version

from guard import store as st


def _open_all(url: str, n: int) -> list[object]:
    """Open ``n`` stores on ``url`` at the same moment; their versions or errors."""
    results: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        try:
            opened = st.Store(url)
            results[i] = opened.version
            opened.close()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_many_daemons_starting_at_once_on_an_empty_database(postgres_url: str) -> None:
    assert _open_all(postgres_url, 6) == [st.SCHEMA_VERSION] * 6
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        versions = [r[0] for r in conn.execute(sa.text("SELECT version FROM schema_version"))]
    engine.dispose()
    assert versions == [st.SCHEMA_VERSION]  # created once


def test_many_daemons_starting_at_once_on_an_older_database(postgres_url: str) -> None:
    st.Store(postgres_url).close()
    as_version(postgres_url, 4)  # no lease tables, no escalation columns
    engine = sa.create_engine(postgres_url)
    assert _open_all(postgres_url, 6) == [st.SCHEMA_VERSION] * 6
    with engine.connect() as conn:
        versions = sorted(r[0] for r in conn.execute(sa.text("SELECT version FROM schema_version")))
        assert sa.inspect(conn).has_table("account_lease")
    engine.dispose()
    assert versions == list(range(4, st.SCHEMA_VERSION + 1))  # migrated once


HOLDER = """
import sys, time
import sqlalchemy as sa
from guard import store as st
engine = sa.create_engine(sys.argv[1])
with st.advisory_lock(engine, "scan:alice"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_an_advisory_lock_is_exclusive_and_dies_with_its_holder(postgres_url: str) -> None:
    st.Store(postgres_url).close()
    engine = sa.create_engine(postgres_url)
    with st.advisory_lock(engine, "scan:alice") as held:
        assert held
        with pytest.raises(st.Busy), st.advisory_lock(engine, "scan:alice"):
            pass
        with st.advisory_lock(engine, "scan:bob"):  # another name is another lock
            pass
    with st.advisory_lock(engine, "scan:alice"):  # released
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, postgres_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(st.Busy), st.advisory_lock(engine, "scan:alice"):
            pass
        holder.kill()  # kill -9: PostgreSQL drops the lock with the session
        holder.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                with st.advisory_lock(engine, "scan:alice"):
                    break
            except st.Busy:
                assert time.monotonic() < deadline, "the dead holder's lock was never dropped"
                time.sleep(0.1)
    finally:
        holder.kill()
        engine.dispose()


def test_sqlite_needs_no_advisory_lock(tmp_path) -> None:
    store = st.Store(f"sqlite:///{tmp_path / 'g.sqlite3'}")
    with st.advisory_lock(store.engine, "scan:alice") as held:
        assert held is False
    store.close()


def test_leases_share_accounts_and_pass_on_when_a_daemon_stops_renewing(
    postgres_url: str,
) -> None:
    st.Store(postgres_url).close()
    engine = sa.create_engine(postgres_url)
    accounts = [f"a{i}" for i in range(10)]
    ttl = 2.0
    a = st.heartbeat(engine, "A", accounts, ttl, frozenset())
    assert a.owned == frozenset(accounts) and a.live == 1  # alone: everything
    b = st.heartbeat(engine, "B", accounts, ttl, frozenset())
    assert b.owned == frozenset() and b.live == 2  # nothing free yet
    a = st.heartbeat(engine, "A", accounts, ttl, a.owned)
    assert len(a.owned) == 5 and len(a.lost) == 5  # hands back above its share
    b = st.heartbeat(engine, "B", accounts, ttl, b.owned)
    assert b.owned == frozenset(accounts) - a.owned and b.gained == b.owned
    # steady: nothing moves
    for _ in range(3):
        a2 = st.heartbeat(engine, "A", accounts, ttl, a.owned)
        b2 = st.heartbeat(engine, "B", accounts, ttl, b.owned)
        assert (a2.owned, b2.owned) == (a.owned, b.owned)
    owners = Counter(
        r[0]
        for r in engine.connect().execute(
            sa.text("SELECT owner FROM account_lease WHERE expires_at > now()")
        )
    )
    assert owners == {"A": 5, "B": 5}
    # A stops renewing (dead): after the lease time B takes everything
    time.sleep(ttl + 0.5)
    b = st.heartbeat(engine, "B", accounts, ttl, b.owned)
    assert b.owned == frozenset(accounts) and b.live == 1
    # A comes back: it gets nothing until B hands some back; B's clean stop frees all
    assert st.heartbeat(engine, "A", accounts, ttl, frozenset()).owned == frozenset()
    st.release(engine, "B")
    assert st.heartbeat(engine, "A", accounts, ttl, frozenset()).owned == frozenset(accounts)
    assert [r.id for r in st.replicas(engine, ttl)] == ["A"]
    engine.dispose()


def test_a_busy_account_is_not_handed_back(postgres_url: str) -> None:
    st.Store(postgres_url).close()
    engine = sa.create_engine(postgres_url)
    accounts = ["x", "y"]
    a = st.heartbeat(engine, "A", accounts, 5.0, frozenset())
    st.heartbeat(engine, "B", accounts, 5.0, frozenset())
    a = st.heartbeat(engine, "A", accounts, 5.0, a.owned, busy=frozenset(accounts))
    assert a.owned == frozenset(accounts)  # both are being scanned: none handed back yet
    engine.dispose()


def test_a_daemon_stalled_in_its_heartbeat_does_not_hold_up_the_others(
    postgres_url: str,
) -> None:
    """Seen under load: a daemon paused in the middle of its heartbeat transaction (its
    interpreter busy elsewhere) kept its renewed rows locked, and every other daemon's
    heartbeat waited behind it until their own leases lapsed."""
    st.Store(postgres_url).close()
    engine = sa.create_engine(postgres_url)
    accounts = [f"a{i}" for i in range(6)]
    a = st.heartbeat(engine, "A", accounts, 30.0, frozenset())
    b = st.heartbeat(engine, "B", accounts, 30.0, frozenset())
    a = st.heartbeat(engine, "A", accounts, 30.0, a.owned)
    b = st.heartbeat(engine, "B", accounts, 30.0, b.owned)
    assert len(a.owned) == len(b.owned) == 3
    # A's renewal, left open as a stalled daemon leaves it
    stalled = engine.connect()
    stalled.begin()
    stalled.execute(
        sa.text("UPDATE account_lease SET expires_at = now() + interval '30 s' WHERE owner = 'A'")
    )
    done: list[st.Heartbeat] = []
    beat = threading.Thread(
        target=lambda: done.append(st.heartbeat(engine, "B", accounts, 30.0, b.owned)),
        daemon=True,
    )
    beat.start()
    beat.join(20)  # it used to wait for as long as A's transaction stayed open
    try:
        assert done, "B's heartbeat waited for the stalled daemon's transaction"
        assert done[0].owned == b.owned and done[0].live == 2
    finally:
        stalled.rollback()
        stalled.close()
        beat.join(10)
        engine.dispose()
