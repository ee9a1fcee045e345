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
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from guard import store as st
from guard.config import Config, default_state_dir
from guard.errors import GuardError, Kind
from guard.mail.message import Message, parse_message
from guard.mailbox import labels as labelling
from guard.mailbox import threads
from guard.mailbox.imap import SENT, Connection, Fetched, ImapError, Selected, ServerSettings
from guard.policy import LEVELS, RuleSet, Verdict, evaluate, level_at_least
from guard.policy.model import UNCHECKED_RULE, unchecked_finding
from guard.policy.structural import is_trusted_platform_sender
from guard.reports import drafts

log = logging.getLogger(__name__)

LABEL_ROUND = 2000  # messages read between two label writes (and folder-position saves)

Progress = Callable[[str, int, int], None]  # folder, done, total
Judged = tuple[Fetched, Message, Verdict, list[str]]  # a message read and judged


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

    @classmethod
    def from_config(cls, config: Config, account: str = "default") -> ScanSettings:
        """Settings for one account; secrets are read only when logging in."""
        acct = config.account_named(account)
        imap = acct.imap
        server = ServerSettings(
            host=imap.host,
            port=imap.port,
            tls=imap.tls,
            username=imap.username,
            password=None if imap.uses_oauth2 else lambda: imap.password().reveal(),
            oauth2_token=(lambda: imap.oauth2_token().reveal()) if imap.uses_oauth2 else None,
            ca_file=str(imap.ca_file) if imap.ca_file else None,
            timeout=float(imap.timeout),
        )
        return cls(
            server=server,
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
        )


@dataclass
class ScanControl:
    """Hooks for a daemon: ``stop_requested`` is polled before each message is judged and
    before each store write (once it is true the scan ends there: what was committed
    stays, the message being judged is not recorded and is judged again next time);
    ``connected`` is called with the live connection (and with None when it is closed)."""

    stop_requested: Callable[[], bool] = lambda: False
    connected: Callable[[Connection | None], None] = lambda _conn: None


@dataclass
class FolderSummary:
    fetched: int = 0
    new_messages: int = 0
    risky: int = 0
    uidvalidity: int | None = None
    uidvalidity_reset: bool = False
    unchanged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "fetched": self.fetched,
            "new_messages": self.new_messages,
            "risky": self.risky,
            "uidvalidity": self.uidvalidity,
            "uidvalidity_reset": self.uidvalidity_reset,
            "unchanged": self.unchanged,
        }


@dataclass(frozen=True)
class PlannedLabel:
    folder: str
    uid: int
    subject: str
    sender: str
    risk: str
    labels: tuple[str, ...]  # spellings, e.g. "keyword:$GuardScam", "folder:Guard/Scam"


@dataclass
class ScanSummary:
    account: str
    dry_run: bool
    label_mode: str = ""
    folders: dict[str, FolderSummary] = field(default_factory=dict)
    labelled: int = 0
    planned: list[PlannedLabel] = field(default_factory=list)
    commands: int = 0
    fetch_commands: int = 0
    drafts: int = 0
    stopped: bool = False  # ended early because a stop was requested

    @property
    def fetched(self) -> int:
        return sum(f.fetched for f in self.folders.values())

    @property
    def new_messages(self) -> int:
        return sum(f.new_messages for f in self.folders.values())

    @property
    def risky(self) -> int:
        return sum(f.risky for f in self.folders.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "folders": {name: f.to_dict() for name, f in self.folders.items()},
            "fetched": self.fetched,
            "new_messages": self.new_messages,
            "risky": self.risky,
            "labelled": self.labelled,
            "label_mode": self.label_mode,
            "dry_run": self.dry_run,
            "fetch_commands": self.fetch_commands,
            "drafts": self.drafts,
            "stopped": self.stopped,
        }
        if self.dry_run:
            out["would_label"] = [
                {
                    "folder": p.folder,
                    "uid": p.uid,
                    "subject": p.subject,
                    "from": p.sender,
                    "risk": p.risk,
                    "labels": list(p.labels),
                }
                for p in self.planned
            ]
        return out


class ScanError(GuardError):
    """The scan could not complete; the message says why in one line. ``kind`` is the
    cause's (an ``ImapError``'s "login", a ``StoreError``'s "store" …)."""

    def __init__(
        self, message: str, summary: ScanSummary | None = None, kind: Kind | str = Kind.SCAN
    ) -> None:
        super().__init__(message, kind=kind)
        self.summary = summary


class ScanStopped(GuardError):
    """A stop was requested: the scan ends before judging or writing anything more."""

    kind = Kind.STOPPED


def _with_unchecked(verdict: Verdict, reason: str) -> Verdict:
    """``verdict`` with ``reason`` added to why the message was not read whole (one
    unchecked finding per message, naming every reason)."""
    reasons = (*verdict.unchecked, reason)
    kept = tuple(f for f in verdict.findings if f.rule != UNCHECKED_RULE)
    return replace(verdict, unchecked=reasons, findings=(*kept, unchecked_finding(reasons)))


def mailbox_identity(server: ServerSettings) -> str:
    """Which mailbox an account's UIDs belong to: ``username@host``.

    The port is left out on purpose: moving from STARTTLS on 143 to TLS on 993 reaches the
    same mailbox, whose UIDs stay valid.
    """
    return f"{server.username}@{server.host.lower().rstrip('.')}"


def _lock_path(config: Config, account: str) -> Path:
    db = config.sqlite_path
    base = db.parent if db is not None else default_state_dir()
    stem = db.name if db is not None else "store"
    return base / f".{stem}.{account}.scan-lock"


@contextmanager
def scan_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock for one scan; a second scan (a manual ``scan`` while the
    daemon is polling) is refused instead of labelling the same messages twice."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ScanError(f"another scan of this mailbox is running (lock {path})") from None
        yield
    finally:
        os.close(fd)


def _mode_fits(known: str, configured: str) -> bool:
    if configured == "auto":
        return known in ("keywords+folders", "folders", "gmail")
    if configured == "keywords":
        return known in ("keywords", "folders")
    return known == configured


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _addresses(msg: Message) -> str:
    return ",".join(a.addr for a in (*msg.to, *msg.cc) if a.addr)[:4000]


class _Scanner:
    def __init__(
        self,
        settings: ScanSettings,
        store: st.Store,
        rules: RuleSet,
        conn: Connection,
        dry_run: bool,
        progress: Progress | None,
    ) -> None:
        self.s = settings
        self.store = store
        self.rules = rules
        self.conn = conn
        self.dry_run = dry_run
        self.progress = progress
        self.summary = ScanSummary(account=settings.account, dry_run=dry_run)
        self.mode: str | None = None
        self.sent_folder: str | None = None
        self._dry_session: Session | None = None
        self.written: dict[int, set[str]] = defaultdict(set)  # message pk -> spellings
        self.stop_requested: Callable[[], bool] = lambda: False
        self.stale_checked: dict[str, bool] = {}  # folder -> rows under another UIDVALIDITY
        self.draft_candidates: list[drafts.Candidate] = []

    # -- store units of work -------------------------------------------------------

    @contextmanager
    def unit(self) -> Iterator[Session]:
        """A committed unit of work, or in a dry run a flush inside one open transaction
        that is rolled back at the end. None begins once a stop was requested."""
        self.check_stop()
        if not self.dry_run:
            with self.store.session() as session:
                yield session
            return
        if self._dry_session is None:
            self._dry_session = Session(self.store.engine, expire_on_commit=False)
        try:
            yield self._dry_session
            self._dry_session.flush()
        except (SQLAlchemyError, UnicodeError, OverflowError) as exc:  # never SQL or values
            raise st.RowRefused(st.error_class(exc)) from None

    def claim_mailbox(self, run_id: int | None) -> None:
        """Folder state recorded for another mailbox under this account name (the
        configuration now names another host or user) is not this mailbox's: its history
        is kept aside and this mailbox starts from its own (see store.claim_mailbox)."""
        mailbox = mailbox_identity(self.s.server)
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

    def check_stop(self) -> None:
        if self.stop_requested():
            raise ScanStopped

    def discard(self) -> None:
        if self._dry_session is not None:
            self._dry_session.rollback()
            self._dry_session.close()
            self._dry_session = None

    # -- folders -------------------------------------------------------------------

    def folders(self) -> list[str]:
        self.sent_folder = self.conn.special_folder(SENT)
        if self.s.folders:
            wanted = list(self.s.folders)
        else:
            wanted = ["INBOX"] + ([self.sent_folder] if self.sent_folder else [])
        prefix = self.s.label_prefix + self.conn.delimiter
        # Never scan our own label folders: they hold copies of messages already judged.
        return [
            f
            for f in dict.fromkeys(wanted)
            if not f.startswith(prefix) and f != self.s.label_prefix
        ]

    def resolve_mode(self, selected: Selected | None) -> str:
        if self.mode is not None:
            return self.mode
        configured = self.s.label_mode
        fixed = labelling.fixed_mode(configured, self.conn.is_gmail)
        if fixed is not None:
            self.mode = fixed
        else:
            if selected is None or (selected.readonly and not selected.permanent_flags):
                # EXAMINE shows no PERMANENTFLAGS: use what the last real scan found, else
                # look at INBOX (read-only in a dry run, where keywords are then assumed).
                with self.unit() as session:
                    state = st.get_folder_state(session, self.s.account, "INBOX")
                known = state.label_mode if state is not None else None
                if known and _mode_fits(known, configured):
                    self.mode = known
                    self.summary.label_mode = known
                    return known
                if selected is None:
                    selected = self.conn.select("INBOX", readonly=self.dry_run)
            if selected.readonly and not selected.permanent_flags:
                allowed = True
            else:
                allowed = selected.keywords_allowed
            if configured == "keywords" and not allowed:
                log.warning(
                    "labels.mode is keywords but the server does not allow keywords "
                    "(no \\* in PERMANENTFLAGS); using label folders instead"
                )
            self.mode = labelling.keyword_mode(configured, allowed)
        self.summary.label_mode = self.mode
        return self.mode

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
                    label_mode=self.mode,
                    mailbox=mailbox_identity(self.s.server),
                )

        def finish_round(last: int) -> None:
            self.write_labels(folder, selected)
            save_state(last)

        for start in range(0, total, self.s.batch_size):
            if self.stop_requested():
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

    # -- one batch -----------------------------------------------------------------

    def judge(self, fetched: Fetched) -> tuple[Message, Verdict, list[str]]:
        msg = parse_message(fetched.raw)
        notes = list(msg.defects)
        verdict = evaluate(self.rules, msg)
        if fetched.truncated:
            cut = (
                f"message is {fetched.size} bytes; only the first {len(fetched.raw)} were "
                "fetched and checked (imap.max_message_bytes)"
            )
            notes.append(cut)
            verdict = _with_unchecked(verdict, cut)
        notes.extend(verdict.notes)
        return msg, verdict, notes

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
            self.record_group(folder, selected, group, fs)
            group.clear()  # hold nothing while the next run is fetched

    def record_group(
        self, folder: str, selected: Selected, group: list[Fetched], fs: FolderSummary
    ) -> None:
        judged: list[Judged] = []
        for fetched in group:
            self.check_stop()  # a message not judged yet is judged again next time
            fs.fetched += 1
            judged.append((fetched, *self.judge(fetched)))
        self.summary.commands = self.conn.commands
        self.record_safely(folder, selected, judged, fs)

    def record_safely(
        self, folder: str, selected: Selected, judged: list[Judged], fs: FolderSummary
    ) -> None:
        """Record judged messages in one unit of work; if the store refuses it (a value or
        constraint it does not accept), again message by message, and the one it refuses
        is recorded as unreadable by its UID: one message never blocks a folder. A store
        that refuses everything (locked, full, gone) raises StoreError as before."""
        before = (len(self.draft_candidates), fs.new_messages, fs.risky)
        try:
            self.record_judged(folder, selected, judged, fs)
            return
        except st.RowRefused:
            if self.dry_run:  # one rolled-back transaction: nothing to retry within
                raise
            del self.draft_candidates[before[0] :]
            fs.new_messages, fs.risky = before[1:]
        for item in judged:
            before = (len(self.draft_candidates), fs.new_messages, fs.risky)
            try:
                self.record_judged(folder, selected, [item], fs)
            except st.RowRefused as exc:
                del self.draft_candidates[before[0] :]
                fs.new_messages, fs.risky = before[1:]
                log.warning(
                    "%s: UID %d: the store refused this message (%s); recorded as unreadable",
                    folder,
                    item[0].uid,
                    exc.error_class,
                )
                self.record_unreadable(folder, selected, item, exc.error_class, fs)

    def record_unreadable(
        self, folder: str, selected: Selected, item: Judged, error: str, fs: FolderSummary
    ) -> None:
        """A minimal row for a message the store refused: its location, content hash and
        the risk it was judged at, marked unchecked (label, digest) with the reason."""
        fetched, _msg, verdict, _notes = item
        reason = f"the store refused this message: {error}"
        digest = content_hash(fetched.raw)
        received = st.as_utc_naive(fetched.internal_date)
        with self.unit() as session:
            row = st.StoredMessage(
                account=self.s.account,
                folder=folder,
                uidvalidity=selected.uidvalidity,
                uid=fetched.uid,
                direction="out" if folder == self.sent_folder else "in",
                content_hash=digest,
                thread_id=threads.new_thread_id(digest, fetched.gm_thrid),
                date=received,
                internal_date=received,
                size=fetched.size,
                risk=verdict.risk,
                score=verdict.score,
                categories=",".join(verdict.categories),
                notes=reason,
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            st.add_findings(session, row.id, [unchecked_finding([reason])])
            self.update_threads(session, self.s.account, {row.thread_id})
        fs.new_messages += 1
        if self.labels_level(verdict.risk):
            fs.risky += 1

    def record_judged(
        self, folder: str, selected: Selected, judged: list[Judged], fs: FolderSummary
    ) -> None:
        direction = "out" if folder == self.sent_folder else "in"
        account = self.s.account
        uids = [f.uid for f, *_rest in judged]
        with self.unit() as session:
            touched: set[str] = set()
            known = st.locations(session, account, folder, selected.uidvalidity, uids)
            if folder not in self.stale_checked:
                self.stale_checked[folder] = st.has_other_uidvalidity(
                    session, account, folder, selected.uidvalidity
                )
            fresh = []
            for fetched, msg, verdict, notes in judged:
                existing = known.get(fetched.uid)
                if existing is None and self.stale_checked[folder]:
                    existing = self.relocate(session, folder, selected.uidvalidity, fetched)
                if existing is not None:  # already recorded: a stopped scan, or a new UIDVALIDITY
                    touched.add(existing.thread_id)
                    continue
                fresh.append((fetched, msg, verdict, notes, content_hash(fetched.raw)))
            reused: dict[int, tuple[str, str]] = {}
            thread_ids = threads.assign_batch(
                session,
                account,
                [(m, h, f.gm_thrid) for f, m, _v, _n, h in fresh],
                owners=[drafts.own_address(self.s.server.username)],
                owner_sent=direction == "out",
                trusted=lambda m: is_trusted_platform_sender(self.rules.structural, m),
                reused=reused,
            )
            # a Message-ID first used by another sender is a forgery: a phishing finding
            # (assign_batch kept the message out of that sender's thread)
            for i, (mid, first) in reused.items():
                f, m, v, n, h = fresh[i]
                v = threads.with_finding(self.rules, v, threads.reused_id_finding(mid, first))
                fresh[i] = (f, m, v, n, h)
            added: list[tuple[st.StoredMessage, Verdict]] = []
            for (fetched, msg, verdict, notes, digest), thread_id in zip(
                fresh, thread_ids, strict=True
            ):
                row = self.new_row(
                    folder, selected.uidvalidity, fetched, msg, verdict, notes, direction
                )
                row.content_hash = digest
                row.thread_id = thread_id
                session.add(row)
                touched.add(thread_id)
                added.append((row, verdict))
                if self.s.drafts and direction == "in" and self.labels_level(verdict.risk):
                    cand = drafts.candidate(
                        thread_id, msg, verdict.categories, self.s.server.username, row=row
                    )
                    if cand is not None:
                        self.draft_candidates.append(cand)
                fs.new_messages += 1
                if verdict.risk != "none" and level_at_least(verdict.risk, self.s.min_risk):
                    fs.risky += 1
            if self.s.evidence != "none" and not self.dry_run:
                # originals of messages whose thread will be labelled (all, with "all") are
                # kept now, while their bytes are at hand; older messages of a thread that
                # turns risky are fetched again when it does (keep_evidence)
                st.add_evidence(
                    session,
                    [
                        f.raw
                        for f, _m, v, _n in judged
                        if self.s.evidence == "all" or self.labels_level(v.risk)
                    ],
                )
            session.flush()
            for row, verdict in added:
                assert row.id is not None
                st.add_findings(session, row.id, verdict.findings)
            self.update_threads(session, account, touched)

    def labels_level(self, risk: str) -> bool:
        return risk != "none" and level_at_least(risk, self.s.min_risk)

    def write_drafts(self) -> None:
        if not self.s.drafts or self.dry_run or not self.draft_candidates:
            return
        # A thread id may have changed since (threads merge): use the current one.
        with self.unit() as session:
            for cand in self.draft_candidates:
                # by the recorded row, not by its Message-ID: another sender may reuse that
                cand.thread_id = drafts.current_thread(session, self.s.account, cand)
        self.summary.drafts = drafts.write_drafts(
            self.conn,
            self.store,
            self.s.account,
            self.draft_candidates,
            platform=self.s.drafts_platform,
            user_dir=self.s.drafts_dir,
        )

    def relocate(
        self, session: Session, folder: str, uidvalidity: int, fetched: Fetched
    ) -> st.StoredMessage | None:
        """The row of the same bytes recorded under an older UIDVALIDITY, moved to the new
        location with its findings kept. Keywords and Gmail labels belonged to the old
        copy and are written again; label-folder copies are separate messages and stay."""
        stale = st.stale_copy(
            session, self.s.account, folder, content_hash(fetched.raw), uidvalidity
        )
        if stale is None:
            return None
        stale.uidvalidity = uidvalidity
        stale.uid = fetched.uid
        stale.labels = "\n".join(x for x in stale.label_set if x.startswith("folder:"))
        stale.label_pending = True
        session.add(stale)
        return stale

    def new_row(
        self,
        folder: str,
        uidvalidity: int,
        fetched: Fetched,
        msg: Message,
        verdict: Verdict,
        notes: list[str],
        direction: str,
    ) -> st.StoredMessage:
        sender = msg.from_
        return st.StoredMessage(
            account=self.s.account,
            folder=folder,
            uidvalidity=uidvalidity,
            uid=fetched.uid,
            direction=direction,
            message_id=msg.message_id or None,
            content_hash="",
            thread_id="",
            date=st.as_utc_naive(msg.date),
            internal_date=st.as_utc_naive(fetched.internal_date),
            sender=sender.addr if sender else "",
            sender_name=sender.name if sender else "",
            recipients=_addresses(msg),
            subject=msg.subject,
            in_reply_to=msg.in_reply_to or None,
            references=" ".join(msg.references) or None,
            size=fetched.size,
            risk=verdict.risk,
            score=verdict.score,
            categories=",".join(verdict.categories),
            notes="\n".join(notes),
        )

    def update_threads(self, session: Session, account: str, thread_ids: set[str]) -> None:
        members = st.messages_of_threads(session, account, sorted(thread_ids))
        rows = st.threads_by_id(session, account, sorted(thread_ids))
        for thread_id in sorted(thread_ids):
            self.update_thread(
                session, account, thread_id, members.get(thread_id, []), rows.get(thread_id)
            )
        # Guard/Unchecked is a message's own label, whatever its thread's risk
        everyone = [m for ms in members.values() for m in ms]
        unchecked = st.messages_with_rule(
            session, [m.id for m in everyone if m.id is not None], UNCHECKED_RULE
        )
        if unchecked:
            spelled = self.spellings({labelling.UNCHECKED_LABEL})
            for m in everyone:
                if m.id in unchecked and not spelled <= m.label_set and not m.label_pending:
                    m.label_pending = True
                    session.add(m)

    def update_thread(
        self,
        session: Session,
        account: str,
        thread_id: str,
        members: list[st.StoredMessage],
        thread: st.Thread | None,
    ) -> None:
        risk, wanted = labelling.thread_labels(
            ((m.risk, m.category_list) for m in members), self.s.min_risk
        )
        names = "\n".join(sorted(label.name for label in wanted))
        if thread is None:
            thread = st.Thread(account=account, thread_id=thread_id)
        cats = sorted({c for m in members for c in m.category_list})
        dates = [m.date for m in members if m.date is not None]
        thread.risk = risk
        thread.score = max((m.score for m in members), default=0.0)
        thread.categories = ",".join(cats)
        thread.subject = members[0].subject if members else ""
        thread.first_date = min(dates) if dates else None
        thread.last_date = max(dates) if dates else None
        thread.updated_at = st.utcnow()
        if wanted:
            spelled = self.spellings(wanted)
            for m in members:
                if not spelled <= m.label_set:
                    m.label_pending = True
                    session.add(m)
        thread.labels = names
        session.add(thread)

    # -- labels --------------------------------------------------------------------

    def spellings(self, wanted: frozenset[labelling.Label] | set[labelling.Label]) -> set[str]:
        mode = self.resolve_mode(None)
        out: set[str] = set()
        for label in wanted:
            out.update(labelling.spell(label, mode, self.s.label_prefix, self.conn.delimiter))
        return out

    def wanted_for(
        self, session: Session, row: st.StoredMessage, unchecked: set[int] | None = None
    ) -> set[str]:
        """The spellings ``row`` should carry: its thread's labels, plus Guard/Unchecked
        when its id is in ``unchecked`` (the messages with an unchecked finding)."""
        own = {labelling.UNCHECKED_LABEL} if unchecked and row.id in unchecked else set()
        thread = st.get_thread(session, row.account, row.thread_id)
        if thread is None or not thread.labels:
            return self.spellings(own) if own else set()
        by_name = {label.name: label for label in labelling.THREAD_LABELS}
        wanted = {by_name[n] for n in thread.labels.split("\n") if n in by_name}
        return self.spellings(wanted | own)

    def write_labels(self, folder: str, selected: Selected) -> None:
        """Write every label the store says messages of ``folder`` still lack."""
        account = self.s.account
        with self.unit() as session:
            rows = [
                r
                for r in st.pending_labels(session, account, folder)
                if r.uidvalidity == selected.uidvalidity
            ]
            todo: dict[str, list[st.StoredMessage]] = defaultdict(list)
            unchecked = st.messages_with_rule(
                session, [r.id for r in rows if r.id is not None], UNCHECKED_RULE
            )
            # originals are kept for messages of flagged threads, not for a message that
            # is only unchecked
            flagged = [r for r in rows if self.wanted_for(session, r)]
            for row in rows:
                missing = self.wanted_for(session, row, unchecked) - row.label_set
                if not missing:
                    row.label_pending = False
                    session.add(row)
                    continue
                for spelling in sorted(missing):
                    todo[spelling].append(row)
            copies = st.label_copies(session, [r.id for r in rows if r.id is not None])
        if not todo:
            return
        if self.dry_run:
            self.plan(folder, todo)
        else:
            self.apply(folder, todo, rows, copies, flagged)
        now = st.utcnow()
        with self.unit() as session:
            for pk, spellings in self.written.items():
                stored = session.get(st.StoredMessage, pk)
                if stored is None:
                    continue
                if not stored.label_set:
                    self.summary.labelled += 1
                stored.labels = "\n".join(sorted(stored.label_set | spellings))
                stored.labelled_at = now
                stored.label_pending = (
                    not self.wanted_for(session, stored, unchecked) <= stored.label_set
                )
                session.add(stored)
        log.info("%s: labelled %d message(s)", folder, len(self.written))
        self.written = defaultdict(set)

    def apply(
        self,
        folder: str,
        todo: dict[str, list[st.StoredMessage]],
        rows: list[st.StoredMessage],
        copies: dict[tuple[int, str], bool],
        flagged: list[st.StoredMessage],
    ) -> None:
        self.keep_evidence(folder, flagged)
        # Copies left half-done by an interrupted scan: look before copying again.
        unsure = {(pk, target) for (pk, target), done in copies.items() if not done}
        if unsure:
            self.settle_unsure_copies(folder, unsure)
            self.conn.select(folder, readonly=False)
            with self.unit() as session:
                copies = st.label_copies(session, [r.id for r in rows if r.id is not None])
        for spelling, members in sorted(todo.items()):
            kind, _, value = spelling.partition(":")
            uids = sorted({m.uid for m in members})
            if kind == "keyword":
                self.conn.add_keywords(uids, [value])
            elif kind == "gmail":
                self.conn.add_gmail_labels(uids, [value])
            elif kind == "folder":
                need = [m for m in members if not copies.get((m.id or 0, value), False)]
                if need:
                    self.conn.ensure_folder(value)
                    with self.unit() as session:
                        for m in need:
                            if (m.id or 0, value) not in copies:
                                session.add(st.LabelCopy(message_pk=m.id or 0, folder=value))
                    self.conn.copy(sorted({m.uid for m in need}), value)
                    with self.unit() as session:
                        for m in need:
                            copy = session.get(st.LabelCopy, (m.id or 0, value))
                            if copy is not None:
                                copy.done = True
                                session.add(copy)
            for m in members:
                self.written[m.id or 0].add(spelling)

    def keep_evidence(self, folder: str, rows: list[st.StoredMessage]) -> None:
        """Store the original bytes of messages about to be labelled (their thread is
        flagged), before the labels: once labelled they are no longer pending, so the
        originals must already be safe. Risky messages had theirs stored with their rows;
        older messages of the thread are fetched again (``BODY.PEEK[]``), in runs of at
        most ``batch_bytes``."""
        if self.s.evidence == "none" or not rows:
            return
        with self.unit() as session:
            missing = st.evidence_missing(session, [r.content_hash for r in rows])
        if not missing:
            return
        refetch = sorted({row.uid for row in rows if row.content_hash in missing})
        for group in self.conn.fetch_groups(refetch, self.s.max_message_bytes, self.s.batch_bytes):
            with self.unit() as session:
                st.add_evidence(session, [fetched.raw for fetched in group])
            group.clear()

    def settle_unsure_copies(self, folder: str, unsure: set[tuple[int, str]]) -> None:
        with self.unit() as session:
            for pk, target in sorted(unsure):
                row = session.get(st.StoredMessage, pk)
                copy = session.get(st.LabelCopy, (pk, target))
                if row is None or copy is None:
                    continue
                exists = False
                if row.message_id and self.conn.folder_exists(target):
                    exists = self.conn.find_by_message_id(target, row.message_id)
                if exists:
                    copy.done = True
                    session.add(copy)
                else:
                    session.delete(copy)

    def plan(self, folder: str, todo: dict[str, list[st.StoredMessage]]) -> None:
        per_row: dict[int, tuple[st.StoredMessage, list[str]]] = {}
        for spelling, members in todo.items():
            for m in members:
                per_row.setdefault(m.id or 0, (m, []))[1].append(spelling)
        for m, spellings in per_row.values():
            self.summary.planned.append(
                PlannedLabel(
                    folder=folder,
                    uid=m.uid,
                    subject=m.subject,
                    sender=m.sender,
                    risk=m.risk,
                    labels=tuple(sorted(spellings)),
                )
            )
            self.written[m.id or 0].update(spellings)

    def finish_other_folders(self, scanned: Sequence[str]) -> None:
        """Labels owed to messages in folders other than the one being scanned (a reply in
        INBOX made a thread risky whose earlier messages sit in Sent, say)."""
        with self.unit() as session:
            folders = sorted({r.folder for r in st.pending_labels(session, self.s.account)})
        for folder in folders:
            try:
                status = self.conn.status(folder)
            except ImapError as exc:
                if exc.kind == "folder":
                    log.warning("%s: folder is gone; its pending labels are skipped", folder)
                    continue
                raise
            with self.unit() as session:
                state = st.get_folder_state(session, self.s.account, folder)
            if state is not None and state.uidvalidity != status.uidvalidity:
                continue  # the folder's next scan re-matches these messages first
            selected = self.conn.select(folder, readonly=self.dry_run)
            self.resolve_mode(selected)
            self.write_labels(folder, selected)
        del scanned


def scan(
    settings: ScanSettings,
    store: st.Store,
    rules: RuleSet,
    *,
    dry_run: bool = False,
    only_folder: str | None = None,
    progress: Progress | None = None,
    control: ScanControl | None = None,
) -> ScanSummary:
    """Run one poll cycle. Raises ScanError (with the partial summary) on failure.

    ``control`` lets a daemon ask the scan to stop after the current batch (everything
    done so far is committed) and see the live connection, to cut it if a stop takes too
    long."""
    if settings.min_risk not in LEVELS[1:]:
        raise ValueError(f"min_risk must be one of low, medium, high (got {settings.min_risk!r})")
    with scan_lock(settings.lock_path):
        return _scan_locked(
            settings, store, rules, dry_run, only_folder, progress, control or ScanControl()
        )


def _scan_locked(
    settings: ScanSettings,
    store: st.Store,
    rules: RuleSet,
    dry_run: bool,
    only_folder: str | None,
    progress: Progress | None,
    control: ScanControl,
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
    conn = Connection(settings.server)
    scanner: _Scanner | None = None
    error: str | None = None
    control.connected(conn)
    try:
        conn.open()
        scanner = _Scanner(settings, store, rules, conn, dry_run, progress)
        scanner.stop_requested = control.stop_requested
        scanner.claim_mailbox(run_id)
        folders = [only_folder] if only_folder else scanner.folders()
        for folder in folders:
            if control.stop_requested():
                break
            scanner.scan_folder(folder)
        scanner.finish_other_folders(folders)
        scanner.check_stop()
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
