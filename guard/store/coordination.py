"""Several daemons on one PostgreSQL store: who owns which account, and one at a time.

Two tools, each for what it does best (PostgreSQL is the only coordinator; SQLite stores
have one daemon, kept alone by a file lock):

- **Leases** (``account_lease``, ``replica``) say which daemon owns an account: it alone
  polls it, watches it with IDLE, sends its digest. A lease expires ``ttl`` seconds after
  its last renewal, by the *database's* clock (``now()``), so daemons on machines whose
  clocks disagree still agree on it; a daemon that dies (kill -9, cut network, machine
  off) loses its accounts within ``ttl``, and the others take them over at their next
  heartbeat. Free accounts are claimed with ``FOR UPDATE SKIP LOCKED``: two daemons
  never claim the same one, and neither waits for the other. Each daemon takes about its
  share (accounts / live daemons, rounded up) and hands back what is above it, so a
  newcomer gets work and nothing flaps.
- **Advisory locks** (session-level, on a connection of their own) make one piece of work
  exclusive: a scan of an account, a digest run, schema creation. A lease can in theory
  outlive its owner's belief in it (a process frozen for longer than ``ttl``); the
  advisory lock cannot: PostgreSQL drops it the moment the holder's session ends. So the
  lock is the safety (never two scans of one mailbox), the lease the schedule.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from guard.errors import GuardError, Kind


class Busy(GuardError):
    """The advisory lock is held by another daemon (or process) right now."""

    kind = Kind.STORE


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (the same in every process and version)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"guard-lock").digest()
    return int.from_bytes(digest, "big", signed=True)


def take_xact_lock(conn: Connection, name: str) -> None:
    """Wait for the transaction-level advisory lock ``name`` (PostgreSQL; nothing on other
    databases): released at the end of ``conn``'s transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})


@contextmanager
def advisory_lock(engine: Engine, name: str, wait: bool = False) -> Iterator[bool]:
    """Hold the session-level advisory lock ``name`` for the ``with`` block, on a
    connection of its own. Yields True when held; on databases other than PostgreSQL
    yields False at once (the caller relies on its file lock). Raises :class:`Busy` when
    another session holds it and ``wait`` is False."""
    if not is_postgres(engine):
        yield False
        return
    key = lock_key(name)
    conn = engine.connect()
    try:
        if wait:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        elif not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
            raise Busy(f"{name} is in progress in another daemon")
        conn.commit()  # the lock is the session's: no transaction stays open meanwhile
        try:
            yield True
        finally:
            # a session that broke has lost the lock already: closing it is enough
            with contextlib.suppress(SQLAlchemyError):
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        with contextlib.suppress(SQLAlchemyError):
            conn.close()


# --------------------------------------------------------------------------- leases


def replica_id() -> str:
    """This daemon's name in the lease tables: host, process and a random part (a PID
    reused after a restart is another daemon)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LiveReplica:
    """A live daemon as the lease tables show it."""

    id: str
    started_at: datetime
    last_seen: datetime
    accounts: tuple[str, ...]


@dataclass(frozen=True)
class Heartbeat:
    """What one heartbeat found: the accounts this daemon owns now, those it gained and
    lost since the last one, and how many daemons are alive."""

    owned: frozenset[str]
    gained: frozenset[str]
    lost: frozenset[str]
    live: int


def heartbeat(
    engine: Engine,
    me: str,
    accounts: Sequence[str],
    ttl: float,
    owned_before: frozenset[str],
    busy: frozenset[str] = frozenset(),
) -> Heartbeat:
    """Renew this daemon's presence and leases, take its share of free accounts and hand
    back what is above its share (never one in ``busy``: being scanned). One transaction;
    every time is the database's."""
    wanted = sorted(set(accounts))
    interval = sa.text(f"make_interval(secs => {float(ttl)!r})")
    with engine.begin() as conn:
        # Never wait long on another daemon's locks: one that stalls in the middle of its
        # heartbeat (a busy machine) must not hold up everyone else's renewal. A renewal
        # that times out is tried again at the next beat.
        conn.execute(sa.text(f"SET LOCAL lock_timeout = {max(int(ttl * 1000 / 6), 200)}"))
        conn.execute(
            sa.text(
                "INSERT INTO replica (id, started_at, last_seen) VALUES (:me, now(), now()) "
                "ON CONFLICT (id) DO UPDATE SET last_seen = now()"
            ),
            {"me": me},
        )
        known = {
            row[0]
            for row in conn.execute(
                sa.text(
                    "SELECT account FROM account_lease WHERE account = ANY(CAST(:a AS text[]))"
                ),
                {"a": wanted},
            )
        }
        missing = sorted(set(wanted) - known)
        if missing:
            # Only for accounts new to the table: an insert that meets a row another
            # daemon is renewing waits for that daemon's transaction to end.
            conn.execute(
                sa.text(
                    "INSERT INTO account_lease (account, owner, expires_at) "
                    "SELECT a, '', 'epoch'::timestamp FROM unnest(CAST(:a AS text[])) AS a "
                    "ON CONFLICT (account) DO NOTHING"
                ),
                {"a": missing},
            )
        renewed = {
            row[0]
            for row in conn.execute(
                sa.text(
                    "UPDATE account_lease SET expires_at = now() + "
                    f"{interval.text} WHERE owner = :me AND expires_at > now() "
                    "AND account = ANY(CAST(:a AS text[])) RETURNING account"
                ),
                {"me": me, "a": wanted},
            )
        }
        live = int(
            conn.execute(
                sa.text(f"SELECT count(*) FROM replica WHERE last_seen > now() - {interval.text}")
            ).scalar()
            or 1
        )
        share = -(-len(wanted) // max(live, 1))  # ceil
        owned = set(renewed)
        if len(owned) < share:
            free = [
                row[0]
                for row in conn.execute(
                    sa.text(
                        "SELECT account FROM account_lease WHERE expires_at <= now() "
                        "AND account = ANY(CAST(:a AS text[])) ORDER BY account "
                        "LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"a": wanted, "n": share - len(owned)},
                )
            ]
            if free:
                conn.execute(
                    sa.text(
                        f"UPDATE account_lease SET owner = :me, expires_at = now() + "
                        f"{interval.text} WHERE account = ANY(CAST(:f AS text[]))"
                    ),
                    {"me": me, "f": free},
                )
                owned.update(free)
        elif len(owned) > share:
            spare = sorted(owned - busy, reverse=True)[: len(owned) - share]
            if spare:
                conn.execute(
                    sa.text(
                        "UPDATE account_lease SET owner = '', expires_at = 'epoch'::timestamp "
                        "WHERE owner = :me AND account = ANY(CAST(:s AS text[]))"
                    ),
                    {"me": me, "s": spare},
                )
                owned.difference_update(spare)
        # forget daemons gone for long (their leases have expired long since)
        conn.execute(sa.text(f"DELETE FROM replica WHERE last_seen < now() - 10 * {interval.text}"))
    result = frozenset(owned)
    return Heartbeat(result, result - owned_before, owned_before - result, live)


def release(engine: Engine, me: str) -> None:
    """A daemon stopping cleanly hands its accounts back at once (no wait for expiry)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE account_lease SET owner = '', expires_at = 'epoch'::timestamp "
                "WHERE owner = :me"
            ),
            {"me": me},
        )
        conn.execute(sa.text("DELETE FROM replica WHERE id = :me"), {"me": me})


def replicas(engine: Engine, ttl: float) -> list[LiveReplica]:
    """The live daemons (seen within ``ttl``) and the accounts each holds a lease on."""
    interval = f"make_interval(secs => {float(ttl)!r})"
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT r.id, r.started_at, r.last_seen, "
                "coalesce(string_agg(l.account, ',' ORDER BY l.account), '') "
                "FROM replica r LEFT JOIN account_lease l "
                "ON l.owner = r.id AND l.expires_at > now() "
                f"WHERE r.last_seen > now() - {interval} "
                "GROUP BY r.id, r.started_at, r.last_seen ORDER BY r.started_at, r.id"
            )
        ).all()
    return [
        LiveReplica(r[0], r[1], r[2], tuple(a for a in str(r[3]).split(",") if a)) for r in rows
    ]
