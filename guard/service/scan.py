"""One poll cycle: IMAP → Message → policy → store → labels.

Order, for crash safety (a scan killed anywhere and run again labels every message once
and skips none):
1. a batch of new messages is fetched (``BODY.PEEK[]``), parsed and judged;
2. messages, findings and thread risk are committed in one transaction;
3. the labels the batch's threads now want are written to the server, then recorded;
4. only then does the folder's sync state (UIDVALIDITY, last UID) advance.
Every step is idempotent: a message already recorded at its (folder, UIDVALIDITY, UID) is
not recorded twice, keywords and Gmail labels are sets, and copies into label folders are
written ahead in the store and looked for by Message-ID before being made again.

With ``dry_run`` the same path runs against a read-only (EXAMINE) folder and a store
transaction that is rolled back: nothing changes anywhere, and the labels that would have
been written are returned in the summary.

This module owns the settings of a scan, the folder loop (which folders, how far each was
read, batches, label rounds) and running one scan or one per account; the parts it puts
together live beside it: ``work`` (the state they share: units of work, stop, summary),
``recording`` (judging and storing messages) and ``labelling`` (which labels threads want
and writing them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from guard import store as st
from guard.config import Config, default_state_dir
from guard.errors import GuardError, Kind
from guard.locks import exclusive_lock, lock_file
from guard.mailbox import (
    SENT,
    Connection,
    ImapError,
    Mailbox,
    Selected,
    ServerSettings,
    server_settings,
)
from guard.policy import LEVELS, RuleSet
from guard.reports import drafts, escalation
from guard.reports.bundle import ExportError
from guard.service.feedback import FeedbackStep, account_feedback
from guard.service.labelling import Labeller
from guard.service.recording import Recorder
from guard.service.work import FolderSummary, ScanPart, ScanStopped, ScanSummary, ScanWork

log = logging.getLogger(__name__)

LABEL_ROUND = 2000  # messages read between two label writes (and folder-position saves)

Progress = Callable[[str, int, int], None]  # folder, done, total


@dataclass(frozen=True)
class ScanSettings:
    server: ServerSettings
    folders: tuple[str, ...] | None = None  # None: INBOX and the special-use \Sent folder
    label_mode: str = "auto"  # auto | gmail | keywords | folders
    label_prefix: str = "Guard"
    min_risk: str = "medium"
    batch_size: int = 200
    max_message_bytes: int = 25 * 1024 * 1024
    batch_bytes: int = 64 * 1024 * 1024  # message bytes held at once (a bigger one alone)
    account: str = "default"
    lock_path: Path | None = None  # one scan at a time per store and account
    evidence: str = "risky"  # risky | all | none: which originals are kept in the store
    drafts: bool = False  # write a decline draft for off-platform requests
    drafts_platform: str = "the platform"
    drafts_dir: Path | None = None
    reports_dir: Path | None = None  # where the evidence bundles of rung-3 reports go

    @classmethod
    def from_config(cls, config: Config, account: str = "default") -> ScanSettings:
        """Settings for one account; secrets are read only when logging in."""
        acct = config.account_named(account)
        imap = acct.imap
        return cls(
            server=server_settings(config, account),
            folders=tuple(imap.folders) if imap.folders else None,
            label_mode=acct.labels.mode,
            label_prefix=acct.labels.prefix,
            min_risk=config.policy.min_risk,
            batch_size=imap.batch_size,
            max_message_bytes=imap.max_message_bytes,
            batch_bytes=imap.batch_bytes,
            account=account,
            lock_path=_lock_path(config, account),
            evidence=config.evidence.keep,
            drafts=config.drafts.enabled,
            drafts_platform=config.drafts.platform,
            drafts_dir=config.drafts.templates,
            reports_dir=_reports_dir(config),
        )


@dataclass
class ScanControl:
    """Hooks for a daemon: ``stop_requested`` is polled before each message is judged and
    before each store write (once it is true the scan ends there: what was committed
    stays, the message being judged is not recorded and is judged again next time);
    ``connected`` is called with the live connection (and with None when it is closed)."""

    stop_requested: Callable[[], bool] = lambda: False
    connected: Callable[[Mailbox | None], None] = lambda _conn: None


class ScanError(GuardError):
    """The scan could not complete; the message says why in one line. ``kind`` is the
    cause's (an ``ImapError``'s "login", a ``StoreError``'s "store" …)."""

    def __init__(
        self, message: str, summary: ScanSummary | None = None, kind: Kind | str = Kind.SCAN
    ) -> None:
        super().__init__(message, kind=kind)
        self.summary = summary


class ScanBusy(ScanError):
    """Another scan of this mailbox is running (this process's or another daemon's)."""


def _reports_dir(config: Config) -> Path:
    """Where rung-3 reports keep their evidence bundles: beside a SQLite store, else in the
    state directory (``reports/``)."""
    db = config.sqlite_path
    return (db.parent if db is not None else default_state_dir()) / "reports"


def _lock_path(config: Config, account: str) -> Path:
    return lock_file(config.sqlite_path, default_state_dir(), account, "scan")


def _scan_busy(path: Path) -> ScanError:
    """A second scan (a manual ``scan`` while the daemon is polling) is refused instead of
    labelling the same messages twice."""
    return ScanBusy(f"another scan of this mailbox is running (lock {path})")


class _Scanner(ScanPart):
    """One scan: the folder loop, putting labelling and recording together."""

    def __init__(
        self,
        settings: ScanSettings,
        store: st.Store,
        rules: RuleSet,
        conn: Mailbox,
        dry_run: bool,
        progress: Progress | None,
    ) -> None:
        super().__init__(ScanWork(settings, store, conn, dry_run))
        self.store = store
        self.progress = progress
        self.labeller = Labeller(self.work)
        self.recorder = Recorder(self.work, rules, self.labeller)
        self.feedback = FeedbackStep(self.work, rules, self.labeller, self.recorder)
        self.recorder.on_recorded = self.feedback.link
        self.resolve_mode = self.labeller.resolve_mode
        self.write_labels = self.labeller.write_labels
        self.finish_other_folders = self.labeller.finish_other_folders
        self.discard = self.work.discard

    def claim_mailbox(self, run_id: int | None) -> None:
        """Folder state recorded for another mailbox under this account name (the
        configuration now names another host or user) is not this mailbox's: its history
        is kept aside and this mailbox starts from its own (see store.claim_mailbox)."""
        mailbox = self.s.server.mailbox
        with self.unit() as session:
            moved = st.claim_mailbox(session, self.s.account, mailbox, keep_run=run_id)
        if moved is not None:
            log.warning(
                "account %s now points at another mailbox (%s, was %s): starting afresh; "
                "the earlier history is kept as account %s",
                self.s.account,
                mailbox,
                moved[0],
                moved[1],
            )

    def take_feedback(self, folders: Sequence[str]) -> None:
        """The user's corrections first (what is put back must not look like new mail),
        then what they taught goes into judging this scan's messages."""
        self.feedback.run(folders)
        self.summary.feedback = self.feedback.taken
        with self.unit() as session:
            self.recorder.taught = account_feedback(session, self.s.account)
            # a message the user reported is not "similar to a message you reported"
            self.recorder.reported = {
                f.content_hash
                for f in st.feedback_rows(session, self.s.account)
                if f.kind == "report"
            }

    def folders(self) -> list[str]:
        self.work.sent_folder = self.conn.special_folder(SENT)
        if self.s.folders:
            wanted = list(self.s.folders)
        else:
            wanted = ["INBOX"] + ([self.work.sent_folder] if self.work.sent_folder else [])
        prefix = self.s.label_prefix + self.conn.delimiter
        # Never scan our own label folders: they hold copies of messages already judged.
        return [
            f
            for f in dict.fromkeys(wanted)
            if not f.startswith(prefix) and f != self.s.label_prefix
        ]

    def scan_folder(self, folder: str) -> None:
        fs = self.summary.folders.setdefault(folder, FolderSummary())
        status = self.conn.status(folder)
        with self.unit() as session:
            state = st.get_folder_state(session, self.s.account, folder)
            pending = bool(st.pending_labels(session, self.s.account, folder))
            known_uidvalidity = state.uidvalidity if state else None
            last_uid = state.last_uid if state else 0
        fs.uidvalidity = status.uidvalidity
        reset = known_uidvalidity is not None and known_uidvalidity != status.uidvalidity
        if reset:
            last_uid = 0
        nothing_new = (
            not reset
            and known_uidvalidity is not None
            and status.uidnext is not None
            and status.uidnext <= last_uid + 1
        )
        if status.highest_modseq is not None or not (nothing_new and not pending):
            # guard keywords the user took away (with CONDSTORE only when flags changed;
            # without it, when the folder is opened anyway: a quiet poll stays cheap)
            self.feedback.check_keywords(folder, status.highest_modseq)
        if nothing_new and not pending:
            fs.unchanged = True
            return
        selected = self.conn.select(folder, readonly=self.dry_run)
        if selected.uidvalidity != status.uidvalidity:  # changed between STATUS and SELECT
            reset = known_uidvalidity is not None and known_uidvalidity != selected.uidvalidity
            last_uid = 0 if reset else last_uid
        fs.uidvalidity = selected.uidvalidity
        if reset:
            fs.uidvalidity_reset = True
            log.warning(
                "%s: UIDVALIDITY changed (%s -> %s): re-reading the folder; messages already "
                "recorded are matched by content and not counted twice",
                folder,
                known_uidvalidity,
                selected.uidvalidity,
            )
        self.resolve_mode(selected)
        if pending:
            self.write_labels(folder, selected)
        uids = [] if nothing_new else self.conn.uids_after(last_uid)
        total = len(uids)
        done = 0
        if self.progress and total:
            self.progress(folder, 0, total)
        labelled_upto = 0

        def save_state(last: int) -> None:
            with self.unit() as session:
                st.save_folder_state(
                    session,
                    self.s.account,
                    folder,
                    uidvalidity=selected.uidvalidity,
                    last_uid=last,
                    highest_modseq=selected.highest_modseq,
                    uidnext=selected.uidnext,
                    label_mode=self.labeller.scheme.mode if self.labeller.scheme else None,
                    mailbox=self.s.server.mailbox,
                )

        def finish_round(last: int) -> None:
            self.write_labels(folder, selected)
            save_state(last)

        for start in range(0, total, self.s.batch_size):
            if self.work.stop_requested():
                # what was committed keeps label_pending: its labels are written first
                # thing next time, and only then does the folder position advance
                log.info("%s: stopping after %d of %d new messages", folder, done, total)
                raise ScanStopped
            batch = uids[start : start + self.s.batch_size]
            self.scan_batch(folder, selected, batch, fs)
            done += len(batch)
            # Labels are written (and only then the folder position advanced) every
            # LABEL_ROUND messages and at the end: a big first scan does not pay the label
            # commands per batch, and a crash re-reads at most one round (whose messages
            # are recognised as recorded and not fetched again).
            if done - labelled_upto >= LABEL_ROUND or done == total:
                finish_round(max(batch))
                labelled_upto = done
            if self.progress:
                self.progress(folder, done, total)
        if not uids:  # nothing to read: still record the folder (and a new UIDVALIDITY)
            save_state(last_uid)

    def scan_batch(
        self, folder: str, selected: Selected, uids: Sequence[int], fs: FolderSummary
    ) -> None:
        """Fetch, judge and record the new messages of ``uids``, in runs of at most
        ``batch_bytes`` of mail each (one transaction per run): the originals of a run are
        let go before the next run is fetched, so memory does not grow with the batch."""
        with self.unit() as session:
            recorded = st.locations(session, self.s.account, folder, selected.uidvalidity, uids)
        todo = [u for u in uids if u not in recorded]  # recorded by a scan that was stopped
        for group in self.conn.fetch_groups(todo, self.s.max_message_bytes, self.s.batch_bytes):
            self.recorder.record_group(folder, selected, group, fs)
            group.clear()  # hold nothing while the next run is fetched

    def write_drafts(self) -> None:
        """One reply draft per thread for the rung its stage has reached (the reply to
        the latest request), and at rung 3 the report for the platform."""
        if not self.s.drafts or self.dry_run or not self.recorder.draft_candidates:
            return
        latest: dict[str, drafts.Candidate] = {}
        insisting: list[str] = []
        with self.unit() as session:
            for cand in self.recorder.draft_candidates:
                # A thread id may have changed since (threads merge): use the current one,
                # by the recorded row, not by its Message-ID (another sender may reuse it)
                cand.thread_id = drafts.current_thread(session, self.s.account, cand)
                latest[cand.thread_id] = cand  # recorded in date order within a folder
            for thread_id, cand in latest.items():
                members = st.thread_messages(session, self.s.account, thread_id)
                stage = escalation.thread_stage(members, self.s.min_risk)
                cand.rung = stage.rung
                if stage.name == escalation.INSISTS and not session.get(
                    st.ThreadReport, (self.s.account, thread_id)
                ):
                    insisting.append(thread_id)
        self.summary.drafts = drafts.write_drafts(
            self.conn,
            self.store,
            self.s.account,
            [c for c in latest.values() if c.rung],
            platform=self.s.drafts_platform,
            user_dir=self.s.drafts_dir,
        )
        for thread_id in insisting:
            try:
                report = escalation.make_report(
                    self.store,
                    self.s.account,
                    thread_id,
                    min_risk=self.s.min_risk,
                    platform=self.s.drafts_platform,
                    out_dir=self.s.reports_dir,
                )
            except (ExportError, st.StoreError) as exc:
                log.error("report for thread %s not made: %s", thread_id, exc)
                continue
            log.info("report for thread %s ready (%s)", thread_id, report.bundle or "no bundle")


def scan(
    settings: ScanSettings,
    store: st.Store,
    rules: RuleSet,
    *,
    dry_run: bool = False,
    only_folder: str | None = None,
    progress: Progress | None = None,
    control: ScanControl | None = None,
    connect: Callable[[ServerSettings], Mailbox] = Connection,
) -> ScanSummary:
    """Run one poll cycle. Raises ScanError (with the partial summary) on failure.

    ``control`` lets a daemon ask the scan to stop after the current batch (everything
    done so far is committed) and see the live connection, to cut it if a stop takes too
    long. ``connect`` makes the (unopened) mailbox session: an IMAP ``Connection``, or
    in tests a ``MemoryMailbox``."""
    if settings.min_risk not in LEVELS[1:]:
        raise ValueError(f"min_risk must be one of low, medium, high (got {settings.min_risk!r})")
    try:
        # On PostgreSQL also across machines: another daemon's scan of this mailbox
        with (
            st.advisory_lock(store.engine, f"scan:{settings.account}"),
            exclusive_lock(settings.lock_path, _scan_busy),
        ):
            return _scan_locked(
                settings,
                store,
                rules,
                dry_run,
                only_folder,
                progress,
                control or ScanControl(),
                connect(settings.server),
            )
    except st.Busy:
        raise ScanBusy("another daemon is scanning this mailbox") from None
    except SQLAlchemyError as exc:  # the store could not be reached to take the lock
        raise ScanError(f"database error: {st.describe_error(exc)}", None, "store") from None


def scan_accounts(
    config: Config,
    store: st.Store,
    rules: RuleSet,
    names: Sequence[str],
    *,
    dry_run: bool = False,
    only_folder: str | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[str, ScanSummary | ScanError]]:
    """Scan the accounts ``names`` in turn, yielding each one's summary, or the ScanError
    it failed with: one failing mailbox does not stop the others."""
    for name in names:
        try:
            summary = scan(
                ScanSettings.from_config(config, name),
                store,
                rules,
                dry_run=dry_run,
                only_folder=only_folder,
                progress=progress,
            )
        except ScanError as exc:
            yield name, exc
            continue
        yield name, summary


def _scan_locked(
    settings: ScanSettings,
    store: st.Store,
    rules: RuleSet,
    dry_run: bool,
    only_folder: str | None,
    progress: Progress | None,
    control: ScanControl,
    conn: Mailbox,
) -> ScanSummary:
    run_id: int | None = None
    if not dry_run:
        try:
            with store.session() as session:
                run = st.ScanRun(account=settings.account)
                session.add(run)
                session.flush()
                run_id = run.id
        except st.StoreError as exc:  # locked, read-only or full: nothing was done yet
            raise ScanError(str(exc), None, "store") from None
    scanner: _Scanner | None = None
    error: str | None = None
    control.connected(conn)
    try:
        conn.open()
        scanner = _Scanner(settings, store, rules, conn, dry_run, progress)
        scanner.work.stop_requested = control.stop_requested
        scanner.claim_mailbox(run_id)
        folders = [only_folder] if only_folder else scanner.folders()
        scanner.take_feedback(folders)
        for folder in folders:
            if control.stop_requested():
                break
            scanner.scan_folder(folder)
        scanner.finish_other_folders(folders)
        scanner.check_stop()
        scanner.feedback.apply_pending()
        scanner.summary.feedback = scanner.feedback.taken
        scanner.write_drafts()
        if not scanner.summary.label_mode:
            scanner.resolve_mode(None)
        scanner.summary.commands = conn.commands
        scanner.summary.fetch_commands = conn.fetch_commands
        return scanner.summary
    except ScanStopped:
        assert scanner is not None
        scanner.summary.stopped = True
        scanner.summary.commands = conn.commands
        scanner.summary.fetch_commands = conn.fetch_commands
        return scanner.summary
    except ImapError as exc:
        if scanner is not None and control.stop_requested():  # the daemon cut the connection
            scanner.summary.stopped = True
            return scanner.summary
        error = str(exc)
        raise ScanError(error, scanner.summary if scanner else None, exc.kind) from None
    except st.StoreError as exc:
        error = str(exc)
        raise ScanError(error, scanner.summary if scanner else None, "store") from None
    finally:
        control.connected(None)
        if scanner is not None:
            scanner.discard()
        conn.close()
        if run_id is not None:
            _finish_run(store, run_id, scanner.summary if scanner else None, error)


def _finish_run(
    store: st.Store, run_id: int, summary: ScanSummary | None, error: str | None
) -> None:
    try:
        with store.session() as session:
            run = session.get(st.ScanRun, run_id)
            if run is None:
                return
            run.finished_at = st.utcnow()
            if summary is not None:
                run.fetched = summary.fetched
                run.new_messages = summary.new_messages
                run.risky = summary.risky
                run.labelled = summary.labelled
            run.error = error
            session.add(run)
    except st.StoreError as exc:  # the scan's own outcome matters more than its log row
        log.error("could not record the scan run: %s", exc)
