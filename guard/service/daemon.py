"""``inbox-guard run``: the long-running service.

APScheduler drives three jobs: the scan (at start, then every ``schedule.poll_interval``;
one at a time, missed runs coalesced), the daily digest at ``digest.time`` in
``digest.timezone`` (caught up once at start when the last one was missed), and the
systemd watchdog ping. Failures are logged as one line each and retried with backoff:
network trouble quickly at first (5 s, doubling, up to the poll interval), a refused
login slowly (5 min, doubling, up to an hour) so a wrong password never turns into a
lockout storm at the provider.

Signals: SIGTERM/SIGINT ask the scan to stop before the next message it would judge or
the next store write (what was committed stays; the rest is read again next time), then
exit 0 — within 10 s: if the server does not answer in time the connection is cut; if a
message is still being judged after that (a parse the guard cannot interrupt), the
process exits without it, and without ever writing to a store it has closed: that message
is simply judged again at the next start. SIGHUP reloads the configuration and rules (a
broken new file is reported and the old one kept).

At about 550 lines this is one cohesive thing: the ``Daemon`` (its jobs, IDLE watchers,
signal handling and reload share the same state and locks). The retry delays come from
``guard.errors.retry_delay`` and IMAP from ``guard.mailbox``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import ClassVar

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from guard import store as st
from guard.config import Config, ConfigError, default_state_dir, load_config
from guard.errors import GuardError, kind_of, retry_delay
from guard.locks import exclusive_lock, lock_file
from guard.mailbox import Connection, ImapError, Mailbox, server_settings
from guard.policy import RulesError, RuleSet, load_rules, warm_up
from guard.service.scan import ScanBusy, ScanControl, ScanSettings, scan
from guard.service.work import ScanSummary

log = logging.getLogger("inbox-guard")

STOP_GRACE = 7.0  # seconds a running scan may take to reach a stopping point after SIGTERM
STOP_CUT_WAIT = 2.0  # then seconds after cutting its connection, before exiting without it
STOP_BACKSTOP = 9.5  # hard exit if even that could not run (a C call holding the GIL)


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, ImapError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:200]


# --------------------------------------------------------------------------- systemd


def sd_notify(message: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send one notification to systemd (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1).
    Does nothing when not started by systemd with Type=notify."""
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Half of systemd's WatchdogSec for this process, in seconds, or None."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.5)
    except ValueError:
        return None


class JournalFormatter(logging.Formatter):
    """``<priority>message`` lines when stderr goes to the journal (systemd reads the
    prefix as the priority and adds its own timestamp); a timestamped line otherwise."""

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def __init__(self, journal: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s" if not journal else None)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record) if not self.journal else record.getMessage()
        text = " ".join(text.split())  # one event, one line
        if self.journal:
            return f"<{self.PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def setup_logging(verbose: bool = False, env: Mapping[str, str] = os.environ) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(bool(env.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("imapclient", "mailparser", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" on every poll a long first
    # scan outlasts is expected (runs are coalesced), not worth a warning each time
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # mail-parser logs hostile header values at ERROR level: attacker text, not ours.
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)


# --------------------------------------------------------------------------- daemon


def _warm_up(rules: RuleSet) -> None:
    """Build the rules' matchers before the scans need them (see ``guard.policy.warm_up``).
    A failure here is not the daemon's end: the first scan builds them, or reports why."""
    try:
        warm_up(rules)
    except Exception as exc:
        log.warning("could not prepare the rules ahead of the first scan: %s", exc)


@dataclass
class AccountState:
    """What the daemon knows about one mailbox between its scans."""

    name: str
    failures: int = 0
    scans: int = 0
    last_summary: ScanSummary | None = None
    last_error: str | None = None
    connections: dict[str, Mailbox] = field(default_factory=dict)  # "scan"/"idle" -> live
    # the next good scan looks for a missed digest: the first one after start, and the
    # first one after this daemon took the mailbox over from another
    catch_up: bool = True

    @property
    def job_id(self) -> str:
        return f"scan:{self.name}"


class Daemon:
    def __init__(self, config_path: Path | None, env: Mapping[str, str] = os.environ) -> None:
        self.config_path = config_path
        self.env = env
        self.config: Config = load_config(config_path, env)
        self.rules: RuleSet = load_rules(list(self.config.policy.rules))
        # on a server, enough connections for every parallel scan and its scan lock
        self.store = st.Store(self.config.store.url, pool=2 * self.config.schedule.max_parallel + 4)
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        # Scans have a pool of their own, the size of their parallel limit: due scans
        # wait in its queue, not in threads of the pool the digest and the systemd
        # watchdog run on (with more due mailboxes than threads, the watchdog's ping
        # waited behind them, and systemd would kill a daemon that was only busy).
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={
                "default": ThreadPoolExecutor(max_workers=8),
                "scans": ThreadPoolExecutor(max_workers=self.config.schedule.max_parallel),
            },
        )
        self.states: dict[str, AccountState] = {}
        self.idle_threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.abandoned = False  # shutdown gave up on a scan still running: exit without it
        # Several daemons on one PostgreSQL store share its accounts by lease (see
        # guard.store.coordination); on SQLite this daemon owns them all, alone.
        self.clustered = st.is_postgres(self.store.engine)
        self.me = st.replica_id() if self.clustered else ""
        self.owned: frozenset[str] = frozenset()
        self.owned_until = 0.0  # time.monotonic() until which the leases surely hold
        self.live = 1  # daemons sharing the store, at the last heartbeat

    @property
    def scans(self) -> int:
        return sum(state.scans for state in self.states.values())

    # -- ownership (several daemons on one PostgreSQL store) -------------------------

    def owns(self, name: str) -> bool:
        """Whether this daemon may work on account ``name`` now: always on SQLite; with
        several daemons, while it holds the account's lease (and, for safety, only until
        shortly before the lease could have expired unrenewed)."""
        if not self.clustered:
            return True
        return name in self.owned and time.monotonic() < self.owned_until

    def lease_job(self) -> None:
        """Renew this daemon's leases, take over free accounts up to its share and hand
        back what is above it (see ``guard.store.heartbeat``)."""
        if self.stopping.is_set():
            return
        config = self.config
        ttl = float(config.store.lease)
        names = [a.name for a in config.accounts]
        busy = frozenset(n for n, state in self.states.items() if "scan" in state.connections)
        began = time.monotonic()
        try:
            beat = st.heartbeat(self.store.engine, self.me, names, ttl, self.owned, busy)
        except Exception as exc:  # the store unreachable: the leases lapse on their own
            log.error("lease renewal failed: %s", st.describe_error(exc))
            return
        took = time.monotonic() - began
        if self.owned and began + took > self.owned_until:
            log.warning(
                "lease renewal came %.1f s late (the heartbeat took %.1f s): this daemon's "
                "mailboxes may have gone to another daemon meanwhile",
                began + took - self.owned_until,
                took,
            )
        self.owned = beat.owned
        self.owned_until = began + ttl * 0.8
        self.live = beat.live
        for name in sorted(beat.lost):
            log.info("%sanother daemon owns this mailbox now", _who(config, name))
            conn = self.states[name].connections.get("idle") if name in self.states else None
            if conn is not None:
                conn.cut()
        for name in sorted(beat.gained):
            log.info("%sthis daemon owns this mailbox now; scanning", _who(config, name))
            if name in self.states:  # its owner may have died before sending the digest
                self.states[name].catch_up = True
            with contextlib.suppress(JobLookupError):
                self.scheduler.modify_job(f"scan:{name}", next_run_time=datetime.now(UTC))
        if beat.gained or beat.lost:
            self._status()

    def _lease_loop(self) -> None:
        every = max(self.config.store.lease / 3, 1.0)
        while not self.stopping.wait(every):
            self.lease_job()

    # -- jobs ----------------------------------------------------------------------

    def _control(self, state: AccountState) -> ScanControl:
        def connected(conn: Mailbox | None) -> None:
            if conn is None:
                state.connections.pop("scan", None)
            else:
                state.connections["scan"] = conn

        def stop_requested() -> bool:
            return self.stopping.is_set() or not self.owns(state.name)

        return ScanControl(stop_requested=stop_requested, connected=connected)

    def scan_job(self, name: str) -> None:
        """One poll of one mailbox, on the scans' pool: at most ``schedule.max_parallel``
        run at once, so a slow or failing mailbox never holds up the others for longer
        than its turn (a due scan waits in the pool's queue; ownership and the stop are
        checked when it starts)."""
        state = self.states.get(name)
        if state is None or self.stopping.is_set():
            return
        if not self.owns(name):
            log.debug("%sanother daemon owns this mailbox: poll skipped", _who(self.config, name))
            return
        with self._lock:
            config, rules = self.config, self.rules
        try:
            settings = ScanSettings.from_config(config, name)
            summary = scan(settings, self.store, rules, control=self._control(state))
        except ScanBusy as exc:  # another daemon is still at it: its turn, not a failure
            log.info("%s%s; skipping this poll", _who(config, name), exc)
            return
        except GuardError as exc:  # ScanError, StoreError, ConfigError: each with its kind
            self._scan_failed(state, exc)
            return
        if state.failures:
            log.info(
                "%sscan recovered after %d failed attempt(s)", _who(config, name), state.failures
            )
        if summary.stopped:
            log.info(
                "%sscan stopped: %d new, %d risky recorded; the rest is read at the next start",
                _who(config, name),
                summary.new_messages,
                summary.risky,
            )
            return
        state.failures = 0
        state.last_error = None
        state.last_summary = summary
        state.scans += 1
        log.info(
            "%sscan: %d new, %d risky, %d labelled (%s)",
            _who(config, name),
            summary.new_messages,
            summary.risky,
            summary.labelled,
            summary.label_mode,
        )
        self._status()
        # the first scan has filled the store: a missed digest can go; else (or when none
        # was missed) a digest left pending: a failed send, or a daemon that died sending it
        caught_up, state.catch_up = state.catch_up and self._catch_up_digest(name), False
        if not caught_up:
            self._retry_pending_digest(name)

    def _scan_failed(self, state: AccountState, exc: GuardError) -> None:
        if self.stopping.is_set():
            log.info("%sscan ended by the stop: %s", _who(self.config, state.name), exc)
            return
        state.failures += 1
        state.last_error = str(exc)
        # Never longer than the schedule would wait, except for a refused login.
        delay = retry_delay(exc.kind, state.failures, float(self.config.schedule.poll_interval))
        log.error(
            "%sscan failed (%s): %s; retrying in %.0f s",
            _who(self.config, state.name),
            exc.kind,
            exc,
            delay,
        )
        self._status()
        if not self.stopping.is_set():
            next_run = datetime.now(UTC) + timedelta(seconds=delay)
            with contextlib.suppress(JobLookupError):
                self.scheduler.modify_job(state.job_id, next_run_time=next_run)

    def digest_job(self, name: str | None = None) -> None:
        if self.config.digest is None or self.stopping.is_set():
            return
        from guard import reports

        for acct in self.config.accounts:
            if (name is not None and acct.name != name) or not self.owns(acct.name):
                continue
            try:
                outcome = reports.run_digest(self.store, self.config, acct.name)
            except Exception as exc:  # one bad day must not stop the service
                log.error(
                    "%sdigest failed: %s", _who(self.config, acct.name), st.describe_error(exc)
                )
                continue
            level = logging.INFO if outcome.ok else logging.ERROR
            log.log(level, "%s%s", _who(self.config, acct.name), outcome)

    def _retry_pending_digest(self, name: str) -> None:
        if self.config.digest is None:
            return
        from guard import reports

        try:
            with self.store.session() as session:
                pending = st.pending_digests(session, name)
            if pending:
                results = reports.send_pending(self.store, self.config, name)
                failed = any(not r.sent or r.error for r in results)
                level = logging.ERROR if failed else logging.INFO
                log.log(level, "%s%s", _who(self.config, name), reports.summarize(results))
        except Exception as exc:
            log.error("digest retry failed: %s", st.describe_error(exc))

    def _catch_up_digest(self, name: str) -> bool:
        """Send the digest now if the last one was missed; whether it was."""
        if self.config.digest is None:
            return False
        from guard import reports

        try:
            if reports.due(self.store, self.config, name, None):
                log.info(
                    "%sdigest: the last one was missed; sending it now", _who(self.config, name)
                )
                self.digest_job(name)
                return True
        except Exception as exc:
            log.error("digest catch-up failed: %s", st.describe_error(exc))
        return False

    # -- IMAP IDLE ------------------------------------------------------------------

    def idle_loop(self, name: str) -> None:
        """Wait in IDLE on one mailbox's INBOX and start its scan as soon as the server
        reports new mail.

        The poll keeps running as the fallback. The IDLE is renewed every
        ``schedule.idle_renew`` seconds, which also proves the connection is alive: a
        connection that died without a FIN fails that round trip within ``imap.timeout``
        and is replaced (with backoff) instead of waiting forever.
        """
        failures = 0
        state = self.states[name]
        while not self.stopping.is_set() and name in self.states:
            if not self.owns(name):  # another daemon watches it
                self.stopping.wait(1.0)
                continue
            try:
                conn = Connection(server_settings(self.config, name))
            except ConfigError:
                return  # the account was removed by a reload
            state.connections["idle"] = conn
            try:
                conn.open()
                if "IDLE" not in conn.capabilities:
                    log.warning(
                        "%sthe server does not support IDLE: polling only", _who(self.config, name)
                    )
                    return
                conn.select("INBOX", readonly=True)
                if failures:
                    log.info("%sIDLE connection restored", _who(self.config, name))
                    # mail may have arrived while the connection was down: look now
                    with contextlib.suppress(JobLookupError):
                        self.scheduler.modify_job(state.job_id, next_run_time=datetime.now(UTC))
                failures = 0
                self._idle_session(conn, state)
            except Exception as exc:
                if self.stopping.is_set():
                    break
                failures += 1
                delay = retry_delay(kind_of(exc), failures)
                log.error(
                    "%sIDLE connection failed: %s; retrying in %.0f s",
                    _who(self.config, name),
                    _one_line(exc),
                    delay,
                )
                self.stopping.wait(delay)
            finally:
                state.connections.pop("idle", None)
                conn.close()

    def _idle_session(self, conn: Connection, state: AccountState) -> None:
        def stop() -> bool:
            return self.stopping.is_set() or not self.owns(state.name)

        while not stop():
            if conn.idle_wait(self.config.schedule.idle_renew, stop):
                log.info(
                    "%sIDLE: new mail (or mail moved away), scanning now",
                    _who(self.config, state.name),
                )
                with contextlib.suppress(JobLookupError):
                    self.scheduler.modify_job(state.job_id, next_run_time=datetime.now(UTC))

    def watchdog_job(self) -> None:
        sd_notify("WATCHDOG=1", self.env)

    def _status(self) -> None:
        parts = []
        for state in self.states.values():
            if not self.owns(state.name):
                continue
            who = f"{state.name}: " if len(self.states) > 1 else ""
            if state.last_error:
                parts.append(f"{who}scan failing ({state.failures}x): {state.last_error}")
            elif state.last_summary is not None:
                s = state.last_summary
                parts.append(
                    f"{who}last scan {datetime.now().strftime('%H:%M')}: {s.new_messages} new, "
                    f"{s.risky} risky, {s.labelled} labelled"
                )
        if self.clustered:
            owned = sorted(self.owned)
            shown = ", ".join(owned[:5]) + (" ..." if len(owned) > 5 else "")
            parts.insert(
                0,
                f"owns {len(owned)} of {len(self.config.accounts)} mailboxes"
                + (f" ({shown})" if owned else "")
                + f", {self.live} daemon(s) share the store",
            )
        sd_notify("STATUS=" + ("; ".join(parts) or "starting")[:400], self.env)

    # -- scheduling ----------------------------------------------------------------

    def _schedule(self) -> None:
        config = self.config
        names = [a.name for a in config.accounts]
        for gone in [n for n in self.states if n not in names]:
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(self.states[gone].job_id)
            del self.states[gone]
        for name in names:
            state = self.states.setdefault(name, AccountState(name))
            existing = self.scheduler.get_job(state.job_id)
            self.scheduler.add_job(
                self.scan_job,
                IntervalTrigger(seconds=config.schedule.poll_interval, timezone=UTC),
                args=[name],
                id=state.job_id,
                executor="scans",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=existing.next_run_time if existing else datetime.now(UTC),
                replace_existing=True,
            )
            if config.schedule.idle and name not in self.idle_threads:
                thread = threading.Thread(
                    target=self.idle_loop, args=[name], name=f"idle:{name}", daemon=True
                )
                self.idle_threads[name] = thread
                if self.scheduler.running:
                    thread.start()
        if config.digest is not None:
            zone = config.digest.zone()
            self.scheduler.add_job(
                self.digest_job,
                CronTrigger(
                    hour=config.digest.time.hour, minute=config.digest.time.minute, timezone=zone
                ),
                id="digest",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=3600,
                replace_existing=True,
            )
        elif self.scheduler.get_job("digest") is not None:
            self.scheduler.remove_job("digest")

    def _on_job_error(self, event: JobExecutionEvent) -> None:
        log.error("job %s crashed: %s", event.job_id, st.describe_error(event.exception))

    def reload(self) -> None:
        try:
            config = load_config(self.config_path, self.env)
            rules = load_rules(list(config.policy.rules))
        except (ConfigError, RulesError, OSError) as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        _warm_up(rules)
        if config.store.url != self.config.store.url:
            log.warning("store.url changed: takes effect after a restart")
        with self._lock:
            self.config = config
            self.rules = rules
        self._schedule()
        log.info("configuration reloaded from %s", config.source or "defaults")

    # -- main loop -----------------------------------------------------------------

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested.set()
        else:
            self.stopping.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        self.scheduler.add_listener(self._on_job_error, EVENT_JOB_ERROR)
        _warm_up(self.rules)
        if self.clustered:
            self.lease_job()  # before the first poll: take this daemon's share
            # A thread of its own, never queued behind scans waiting for a free slot in
            # the scheduler's pool: a late renewal would hand mailboxes over (and back)
            # while this daemon is alive and well.
            threading.Thread(target=self._lease_loop, name="lease", daemon=True).start()
        self._schedule()
        interval = watchdog_interval(self.env)
        if interval is not None:
            self.scheduler.add_job(
                self.watchdog_job, IntervalTrigger(seconds=interval), id="watchdog"
            )
        self.scheduler.start()
        for thread in self.idle_threads.values():
            thread.start()
        for acct in self.config.accounts:
            log.info(
                "inbox-guard running: %s%s as %s, every %d s",
                _who(self.config, acct.name),
                acct.imap.host,
                acct.imap.username,
                self.config.schedule.poll_interval,
            )
        if self.clustered:
            log.info(
                "sharing the store with other daemons as %s: owns %d of %d mailboxes",
                self.me,
                len(self.owned),
                len(self.config.accounts),
            )
        sd_notify("READY=1", self.env)
        self._status()
        while not self.stopping.is_set():
            self.stopping.wait(0.5)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                sd_notify("RELOADING=1", self.env)
                self.reload()
                sd_notify("READY=1", self.env)
        return self.shutdown()

    def shutdown(self) -> int:
        log.info("stopping: the scan stops before its next message")
        sd_notify("STOPPING=1", self.env)
        # Last resort, run by a C thread that needs no interpreter lock: if a call that
        # holds it (a long regular expression, say) keeps even the steps below from
        # running, the process still ends before systemd's stop timeout.
        backstop = open(os.devnull, "w")  # noqa: SIM115 - must outlive this function
        faulthandler.dump_traceback_later(STOP_BACKSTOP, exit=True, file=backstop)
        done = threading.Event()

        def stop_scheduler() -> None:
            self.scheduler.shutdown(wait=True)
            done.set()

        threading.Thread(target=stop_scheduler, daemon=True).start()
        if not done.wait(STOP_GRACE):
            for state in self.states.values():
                conn = state.connections.get("scan")
                if conn is not None and conn.is_open:
                    log.warning("the server did not answer in time; closing the connection")
                    conn.cut()
            done.wait(STOP_CUT_WAIT)
        if not done.is_set():
            # A message is still being judged: its scan writes nothing more once it sees
            # the stop, and this process ends now (run() exits without waiting for it).
            # The store is left open for that reason: it is never written after close.
            log.warning(
                "stopping without the message being judged; it is judged again at the next start"
            )
            self.abandoned = True
        else:
            if self.clustered:  # hand the mailboxes over now rather than at expiry
                try:
                    st.release(self.store.engine, self.me)
                except Exception as exc:
                    log.warning("could not hand the mailboxes over: %s", st.describe_error(exc))
            self.store.close()
            faulthandler.cancel_dump_traceback_later()
        log.info("stopped")
        return 0


class DaemonBusy(GuardError):
    """A second daemon on a SQLite store: refused (one daemon per SQLite file)."""


def _alone_on_sqlite(daemon: Daemon) -> contextlib.AbstractContextManager[None]:
    """The one-daemon lock of a SQLite store (nothing for PostgreSQL, where daemons share
    the accounts by lease)."""
    if daemon.clustered:
        return contextlib.nullcontext()
    path = lock_file(st.sqlite_path(daemon.store.url), default_state_dir(), "all", "daemon")

    def busy(where: Path) -> DaemonBusy:
        return DaemonBusy(
            f"another inbox-guard daemon is running on this store (lock {where}); one "
            "daemon per SQLite store: use PostgreSQL ([store] url) to run several"
        )

    return exclusive_lock(path, busy)


def _who(config: Config, name: str) -> str:
    """A log prefix naming the mailbox, only when there are several."""
    return f"[{name}] " if len(config.accounts) > 1 else ""


def run(config_path: Path | None, verbose: bool = False) -> int:
    setup_logging(verbose)
    try:
        daemon = Daemon(config_path)
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 2
    except RulesError as exc:
        log.error("rules: %s", exc)
        return 2
    except st.StoreError as exc:
        log.error("%s", exc)
        return 1
    started = time.monotonic()
    try:
        with _alone_on_sqlite(daemon):
            status = daemon.run()
    except DaemonBusy as exc:
        log.error("%s", exc)
        return 1
    log.debug("ran %.0f s, %d scans", time.monotonic() - started, daemon.scans)
    if daemon.abandoned:
        # A scan thread is still inside one message: the interpreter would wait for it at
        # exit. Nothing it holds needs saving (every committed unit is complete; it
        # writes nothing after the stop), so end the process here.
        logging.shutdown()
        os._exit(status)
    return status
