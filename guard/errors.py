"""One error hierarchy for the whole guard, and the retry policy that follows from it.

Every failure the guard reports is a :class:`GuardError` whose ``str()`` is one line fit
for a terminal or the journal (never a secret, never mail text) and whose ``kind`` says
what went wrong in terms a caller can act on. Modules raise their own subclass
(``ConfigError``, ``ImapError``, ``StoreError`` …) so that ``except`` clauses stay
precise, while code that only needs to decide *what to do next* (the daemon's retries,
the CLI's exit status, ``doctor``'s hints) looks at ``kind`` alone, in one place:
:func:`retry_delay`.

Imports nothing from the rest of ``guard``: every layer may use it.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What kind of failure an error is. A ``StrEnum``: ``kind == "login"`` works."""

    # The configuration file, or a secret it points at, cannot be used.
    CONFIG = "config"
    # The server refused the credentials: retried slowly (never a lockout storm).
    LOGIN = "login"
    # Reaching the server: each retried with the network backoff.
    DNS = "dns"
    REFUSED = "refused"
    TLS = "tls"
    TIMEOUT = "timeout"
    NETWORK = "network"
    # The server answered, but not as IMAP should, or the folder is not there.
    PROTOCOL = "protocol"
    FOLDER = "folder"
    # The store (SQLite or PostgreSQL) cannot be opened or written.
    STORE = "store"
    # A rules or weights file is invalid.
    RULES = "rules"
    # A file or corpus the user named cannot be read (a message, labels.csv, a bundle).
    INPUT = "input"
    # What the guard writes (an export, a digest) cannot be written or sent.
    OUTPUT = "output"
    # Another run holds the lock for this work.
    BUSY = "busy"
    # A command was used wrongly (a bad option value, nothing matches).
    USAGE = "usage"
    # A scan failed for a reason not covered above.
    SCAN = "scan"
    # A stop was requested: not a failure to report.
    STOPPED = "stopped"


# Kinds that another try will not fix by itself soon: a person must change something.
NEEDS_A_PERSON = frozenset({Kind.CONFIG, Kind.LOGIN, Kind.RULES})

# Backoff ladders: first delay (s), factor per failure, and ceiling (s).
LOGIN_BACKOFF = (300.0, 2.0, 3600.0)
NETWORK_BACKOFF = (5.0, 2.0, 300.0)


class GuardError(Exception):
    """Base of every error the guard reports; ``kind`` is a :class:`Kind`.

    Subclasses set a default ``kind`` as a class attribute; an instance may carry another
    (an ``ImapError`` is "tls" or "login" …)."""

    kind: Kind = Kind.SCAN

    def __init__(self, message: str = "", *, kind: Kind | str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = Kind(kind)


def kind_of(exc: BaseException) -> Kind:
    """``exc``'s kind; anything that is not a :class:`GuardError` (an ``OSError`` from a
    socket, a bug) counts as a network-like failure that may pass."""
    if isinstance(exc, GuardError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return Kind.TIMEOUT
    return Kind.NETWORK


def retry_delay(kind: Kind | str, failures: int, ceiling: float | None = None) -> float:
    """Seconds to wait before try ``failures + 1`` after ``failures`` failures of ``kind``.

    Credentials and configuration (a person must act) climb the slow ladder, 5, 10, 20 …
    minutes up to an hour or ``ceiling``, whichever is longer: retrying a refused login
    every few seconds is how accounts get locked. Everything else climbs the network
    ladder from 5 s, capped at ``ceiling`` when given (the poll interval: never wait
    longer than the schedule would) or five minutes."""
    failures = max(failures, 1)
    if Kind(kind) in NEEDS_A_PERSON:
        first, factor, cap = LOGIN_BACKOFF
        limit = cap if ceiling is None else max(cap, ceiling)
    else:
        first, factor, cap = NETWORK_BACKOFF
        limit = cap if ceiling is None else ceiling
    return float(min(first * factor ** (failures - 1), limit))
