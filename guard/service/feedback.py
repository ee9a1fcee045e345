"""The user's corrections, read from the mail client at each scan: "safe" and "report".

The user tells the guard, in any mail client:
- **safe**: moves or copies a message into ``Guard/Safe`` (the labels prefix and the
  server's delimiter), adds the Gmail label ``Guard/Safe``, or removes every guard keyword
  from a message;
- **report**: moves or copies a message into ``Guard/Report`` or adds that Gmail label.

Both folders are created at the first real scan, so they are there to drag to. At the
start of each scan (before the folders are read, so what is put back is not taken for
new mail) every message in them is recorded as feedback and then put back where the
store recorded it (INBOX for one the guard never saw) by ``UID MOVE``, which keeps its
flags, ``\\Seen`` included; a copy (the original is still where it was) is removed from
the feedback folder instead. This is the only move the guard makes, and only at the
user's request. Each put-back is written ahead (``feedback_move``) with the feedback row
in one transaction, and settled after a crash by looking for the source UID: no message
is lost or doubled, whatever step a kill interrupts.

What feedback does to the thread (``apply``): its feedback columns are rebuilt from its
rows, the labels it should carry are worked out again (a thread marked safe is not
labelled for those categories; a reported one gets ``Guard/Reported``), and labels the
guard wrote that the thread no longer wants are taken away: keywords, Gmail labels, and
the guard's own copies in label folders (one message with that Message-ID, never more).
What the engine learns from it (trusted senders, reported campaigns) is built by
:func:`account_feedback` for the recorder.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC

from sqlmodel import Session

from guard import store as st
from guard.mail import Message
from guard.mailbox import Fetched, ImapError, Selected
from guard.mailbox.label_backends import BACKENDS, kind_of
from guard.policy import RuleSet
from guard.policy.feedback import (
    Feedback,
    ReportedCampaign,
    fails_authentication,
    message_fingerprint,
)
from guard.policy.fingerprint import Fingerprint
from guard.policy.model import CATEGORIES, UNCHECKED_RULE
from guard.reports import drafts
from guard.service.labelling import Labeller
from guard.service.recording import Recorder, content_hash
from guard.service.work import ScanPart, ScanWork

log = logging.getLogger("guard.service.scan")

SAFE, REPORT = "safe", "report"
FOLDER_NAMES = {SAFE: "Safe", REPORT: "Report"}
TEXT_CATEGORIES = tuple(c for c in CATEGORIES if c != "phishing")
_AUTH_FAILURES = ("phishing.dmarc-fail", "phishing.spf-fail", "phishing.dkim-fail")


def feedback_folder(prefix: str, delimiter: str, kind: str) -> str:
    return f"{prefix}{delimiter}{FOLDER_NAMES[kind]}"


def gmail_label(prefix: str, kind: str) -> str:
    return f"{prefix}/{FOLDER_NAMES[kind]}"


def account_feedback(session: Session, account: str) -> Feedback:
    """What one account's user taught the engine: senders trusted for text categories
    (from "safe" feedback on mail that passed authentication) and reported campaigns."""
    trusted: dict[str, set[str]] = defaultdict(set)
    campaigns: list[ReportedCampaign] = []
    for row in st.feedback_rows(session, account):
        if row.kind == SAFE and row.sender_trusted and row.sender:
            trusted[row.sender.casefold()].update(
                c for c in row.category_list if c in TEXT_CATEGORIES
            )
        elif row.kind == REPORT and row.fingerprint:
            try:
                fp = Fingerprint.from_text(row.fingerprint)
            except ValueError:
                continue
            campaigns.append(
                ReportedCampaign(
                    fingerprint=fp,
                    reported_on=row.created_at.replace(tzinfo=UTC).date(),
                    categories=row.category_list,
                    feedback_id=row.id or 0,
                )
            )
    return Feedback(
        trusted={a: frozenset(c) for a, c in trusted.items() if c},
        campaigns=tuple(campaigns),
    )


class FeedbackStep(ScanPart):
    """Reading and applying the user's corrections in one scan."""

    def __init__(
        self, work: ScanWork, rules: RuleSet, labeller: Labeller, recorder: Recorder
    ) -> None:
        super().__init__(work)
        self.rules = rules
        self.labeller = labeller
        self.recorder = recorder
        self.taken = 0  # corrections recorded in this scan

    # -- the feedback folders and Gmail labels ---------------------------------------

    def folders(self) -> dict[str, str]:
        return {
            kind: feedback_folder(self.s.label_prefix, self.conn.delimiter, kind)
            for kind in (SAFE, REPORT)
        }

    def run(self, guarded: Sequence[str]) -> None:
        """Settle interrupted put-backs, read the feedback folders (creating them the
        first time) and Gmail labels, and apply what was recorded. Not in a dry run."""
        if self.dry_run:
            return
        self.settle_moves()
        for kind, folder in self.folders().items():
            self.take_folder(folder, kind)
        if self.conn.is_gmail:
            for folder in guarded:
                self.take_gmail_labels(folder)
        self.apply_pending()

    def take_folder(self, folder: str, kind: str) -> None:
        """Take every message in one feedback folder (created when missing: one STATUS a
        poll when it is there and empty)."""
        try:
            status = self.conn.status(folder)
        except ImapError as exc:
            if exc.kind != "folder":
                raise
            self.conn.ensure_folder(folder)
            return
        if not status.messages:
            return
        selected = self.conn.select(folder, readonly=False)
        uids = self.conn.uids_after(0)
        for group in self.conn.fetch_groups(uids, self.s.max_message_bytes, self.s.batch_bytes):
            for fetched in group:
                self.take_one(folder, selected, fetched, kind)
                self.conn.select(folder, readonly=False)
            group.clear()

    def take_one(self, folder: str, selected: Selected, fetched: Fetched, kind: str) -> None:
        """Record one message found in a feedback folder, then put it back (or remove it,
        when it is a copy and its original is still in place)."""
        digest = content_hash(fetched.raw)
        msg, verdict, _notes = self.recorder.judge(fetched, with_feedback=False)
        with self.unit() as session:
            original = st.recorded_original(session, self.s.account, digest, msg.message_id)
            origin = original.folder if original is not None else "INBOX"
            origin_uid = (original.uid, original.uidvalidity) if original is not None else None
        still_there = False
        target_uidnext: int | None = None
        try:
            status = self.conn.status(origin)
        except ImapError as exc:
            if exc.kind != "folder":
                raise
            origin, origin_uid = "INBOX", None  # the folder it came from is gone
            status = self.conn.status(origin)
        target_uidnext = status.uidnext
        if origin_uid is not None and origin_uid[1] == status.uidvalidity:
            self.conn.select(origin, readonly=True)
            still_there = bool(self.conn.existing_uids([origin_uid[0]]))
        elif msg.message_id:
            # not recorded yet (it came after the last scan), or recorded under a
            # UIDVALIDITY the folder no longer has: a copy when the same bytes are in the
            # folder already; then only the copy goes, and the folder keeps one
            self.conn.select(origin, readonly=True)
            same_id = self.conn.uids_with_message_id(msg.message_id)
            still_there = self.holds(same_id, digest)
        self.conn.select(folder, readonly=False)
        action = "delete" if still_there else "move"
        move = st.FeedbackMove(
            account=self.s.account,
            source=folder,
            uidvalidity=selected.uidvalidity,
            uid=fetched.uid,
            action=action,
            target=origin,
            target_uidnext=target_uidnext,
            content_hash=digest,
            message_pk=original.id if original is not None else None,
        )
        taken = self.taken
        for bare in (False, True):
            self.taken = taken
            try:
                with self.unit() as session:
                    move.feedback_pk = self.record(
                        session,
                        kind=kind,
                        via="copy" if still_there else "move",
                        msg=msg,
                        categories=verdict.categories,
                        digest=digest,
                        original=original,
                        bare=bare,
                    )
                    session.add(move)
                break
            except st.RowRefused as exc:
                # a value the database does not take (from the message's headers): the
                # correction is recorded without them; the message is put back all the same
                log.warning(
                    "%s: UID %d: feedback stored without its headers (%s)",
                    folder,
                    fetched.uid,
                    exc.error_class,
                )
                move.id = None
                if bare:
                    raise
        if action == "move":
            self.conn.move(fetched.uid, origin)
        else:
            self.conn.expunge_one(fetched.uid)
        self.finish_move(move)

    def holds(self, uids: Sequence[int], digest: str) -> bool:
        """Whether one of ``uids`` of the selected folder is a message with these bytes."""
        found = False
        for group in self.conn.fetch_groups(uids, self.s.max_message_bytes, self.s.batch_bytes):
            found = found or any(content_hash(f.raw) == digest for f in group)
            group.clear()
        return found

    def record(
        self,
        session: Session,
        *,
        kind: str,
        via: str,
        msg: Message | None,
        categories: Sequence[str],
        digest: str,
        original: st.StoredMessage | None,
        sender_trusted: bool | None = None,
        bare: bool = False,
    ) -> int | None:
        """Add one feedback row (none when this message was already marked ``kind``: the
        same correction twice); its id, or None. ``bare``: without the message's sender,
        subject and Message-ID (the store refused them)."""
        if st.has_feedback(session, self.s.account, digest, kind):
            return None
        thread_id = original.thread_id if original is not None else None
        thread = st.get_thread(session, self.s.account, thread_id) if thread_id else None
        if kind == SAFE:
            # what the thread was flagged for: those categories are not labelled again
            cats = list(thread.category_list) if thread is not None else list(categories)
        else:
            cats = list(categories)
        fingerprint = None
        if kind == REPORT and msg is not None:
            fp = message_fingerprint(msg)
            fingerprint = None if fp.too_short else fp.to_text()
        sender = msg.from_.addr if msg is not None and msg.from_ else ""
        if original is not None and not sender:
            sender = original.sender
        trusted = not fails_authentication(msg) if msg is not None else bool(sender_trusted)
        own = drafts.own_address(self.s.server.username)
        if (original is not None and original.direction == "out") or (
            sender and own and sender.casefold() == own.casefold()
        ):
            trusted = False  # the user's own mail: marking it safe trusts no one
        if bare:
            sender, msg_id, subject = "", None, ""
        else:
            msg_id = (msg.message_id if msg is not None else None) or (
                original.message_id if original is not None else None
            )
            subject = msg.subject if msg is not None else (original.subject if original else "")
        row = st.Feedback(
            account=self.s.account,
            kind=kind,
            via=via,
            thread_id=thread_id,
            content_hash=digest,
            message_id=msg_id,
            sender=sender,
            sender_trusted=trusted,
            subject=subject,
            categories=st.join_commas(cats),
            fingerprint=fingerprint,
        )
        session.add(row)
        session.flush()
        self.taken += 1
        log.info("recorded feedback %s on a message (%s)", kind, via)
        return row.id

    def finish_move(self, move: st.FeedbackMove) -> None:
        """After the put-back: the recorded original now lives at a new UID in its folder
        (found among the UIDs from ``target_uidnext`` on by its bytes); the move is done."""
        new_uid: int | None = None
        uidvalidity: int | None = None
        if move.action == "move" and move.message_pk is not None and move.target:
            selected = self.conn.select(move.target, readonly=True)
            uidvalidity = selected.uidvalidity
            candidates = self.conn.uids_from(move.target_uidnext or 1)
            for group in self.conn.fetch_groups(
                candidates, self.s.max_message_bytes, self.s.batch_bytes
            ):
                for fetched in group:
                    if content_hash(fetched.raw) == move.content_hash:
                        new_uid = fetched.uid
                group.clear()
        with self.unit() as session:
            row = session.get(st.FeedbackMove, move.id)
            if row is None:
                return
            if new_uid is not None and move.message_pk is not None:
                original = session.get(st.StoredMessage, move.message_pk)
                if original is not None:
                    original.uid = new_uid
                    original.uidvalidity = uidvalidity or original.uidvalidity
                    session.add(original)
            row.done = True
            session.add(row)

    def settle_moves(self) -> None:
        """Put-backs an interrupted scan left open: the source UID still in the feedback
        folder means the step did not happen (do it now); gone means it did."""
        with self.unit() as session:
            moves = st.open_moves(session, self.s.account)
        for move in moves:
            try:
                selected = self.conn.select(move.source, readonly=False)
            except ImapError as exc:
                if exc.kind != "folder":
                    raise
                selected = None
            same = selected is not None and selected.uidvalidity == move.uidvalidity
            if same and self.conn.existing_uids([move.uid]):
                if move.action == "move" and move.target:
                    self.conn.move(move.uid, move.target)
                else:
                    self.conn.expunge_one(move.uid)
            self.finish_move(move)

    def take_gmail_labels(self, folder: str) -> None:
        """Messages of a guarded folder that carry the Gmail label Guard/Safe or
        Guard/Report: recorded, then the label is taken away (the message stays)."""
        labels = {kind: gmail_label(self.s.label_prefix, kind) for kind in (SAFE, REPORT)}
        try:
            selected = self.conn.select(folder, readonly=False)
        except ImapError as exc:
            if exc.kind == "folder":
                return
            raise
        for kind, label in labels.items():
            uids = self.conn.search_gmail_label(label)
            if not uids:
                continue
            with self.unit() as session:
                known = st.locations(session, self.s.account, folder, selected.uidvalidity, uids)
            for uid in uids:
                row = known.get(uid)
                if row is None:
                    continue  # not recorded yet: the label stays until it is
                with self.unit() as session:
                    self.record_on(session, row, kind, "gmail-label")
                self.conn.remove_gmail_labels([uid], [label])

    def record_on(self, session: Session, row: st.StoredMessage, kind: str, via: str) -> None:
        """Feedback on a recorded message that stays where it is (a Gmail label added, the
        guard's keywords taken away): what the guard knows of it comes from its row."""
        self.record(
            session,
            kind=kind,
            via=via,
            msg=None,
            categories=row.category_list,
            digest=row.content_hash,
            original=row,
            sender_trusted=self.passed_auth(session, row),
        )

    def passed_auth(self, session: Session, row: st.StoredMessage) -> bool:
        """Whether a recorded message's sender passed authentication (no auth failure
        among its findings)."""
        if row.id is None:
            return False
        return not any(st.messages_with_rule(session, [row.id], r) for r in _AUTH_FAILURES)

    # -- keywords the user removed -----------------------------------------------------

    def check_keywords(self, folder: str, status_modseq: int | None) -> None:
        """A message whose every guard keyword the user removed is marked safe. Only the
        flags changed since the folder's last check are read (CONDSTORE), when the server
        can say; the folder's mod-sequence is then recorded as checked."""
        if self.dry_run:
            return
        with self.unit() as session:
            state = st.get_folder_state(session, self.s.account, folder)
            if state is None:
                return
            if (
                status_modseq is not None
                and state.highest_modseq is not None
                and status_modseq <= state.highest_modseq
            ):
                return
            rows = st.keyword_labelled(session, self.s.account, folder, state.uidvalidity)
            since = state.highest_modseq if status_modseq is not None else None
        if rows:
            selected = self.conn.select(folder, readonly=False)
            if selected.uidvalidity == state.uidvalidity:
                self.take_removed_keywords(rows, since)
        if status_modseq is not None:
            with self.unit() as session:
                fresh = st.get_folder_state(session, self.s.account, folder)
                if fresh is not None and (fresh.highest_modseq or 0) < status_modseq:
                    fresh.highest_modseq = status_modseq
                    session.add(fresh)

    def take_removed_keywords(self, rows: list[st.StoredMessage], since: int | None) -> None:
        flags = self.conn.flags_of([r.uid for r in rows], changed_since=since)
        for row in rows:
            now = flags.get(row.uid)
            if now is None:
                continue  # unchanged (or gone)
            written = {s.partition(":")[2] for s in row.label_set if kind_of(s) == "keyword"}
            if not written or written & now:
                continue
            with self.unit() as session:
                self.record_on(session, row, SAFE, "keywords")
                stored = session.get(st.StoredMessage, row.id)
                if stored is not None:  # the user took them away: not ours to write again
                    stored.label_set = {s for s in stored.label_set if kind_of(s) != "keyword"}
                    session.add(stored)

    # -- applying feedback to threads ---------------------------------------------------

    def apply_pending(self) -> None:
        """Bring the labels of every thread with new feedback in line with it."""
        with self.unit() as session:
            pending = st.unapplied_feedback(session, self.s.account)
            threads = sorted({f.thread_id for f in pending if f.thread_id})
        for thread_id in threads:
            self.apply(thread_id)
        if pending:
            with self.unit() as session:
                for f in pending:
                    row = session.get(st.Feedback, f.id)
                    if row is not None:
                        row.applied = True
                        session.add(row)

    def apply(self, thread_id: str) -> None:
        account = self.s.account
        with self.unit() as session:
            thread = st.get_thread(session, account, thread_id)
            if thread is None:
                return
            st.refresh_thread(session, thread)
            session.flush()
            self.labeller.update_threads(session, account, {thread_id})
            members = st.messages_of_threads(session, account, [thread_id]).get(thread_id, [])
            unchecked = st.messages_with_rule(
                session, [m.id for m in members if m.id is not None], UNCHECKED_RULE
            )
            unwanted = {
                m.id: m.label_set - self.labeller.wanted_for(session, m, unchecked)
                for m in members
                if m.id is not None
            }
            by_id = {m.id: m for m in members}
        for pk, spellings in unwanted.items():
            if spellings:
                self.take_away(by_id[pk], spellings)

    def take_away(self, row: st.StoredMessage, spellings: frozenset[str] | set[str]) -> None:
        """Remove labels the guard wrote on one message and the thread no longer wants."""
        removed: set[str] = set()
        on_message = sorted(s for s in spellings if not BACKENDS[kind_of(s)].copies)
        if on_message:
            try:
                selected = self.conn.select(row.folder, readonly=False)
            except ImapError as exc:
                if exc.kind != "folder":
                    raise
                selected = None
            if selected is not None and selected.uidvalidity == row.uidvalidity:
                keywords = [s.partition(":")[2] for s in on_message if kind_of(s) == "keyword"]
                gmail = [s.partition(":")[2] for s in on_message if kind_of(s) == "gmail"]
                self.conn.remove_keywords([row.uid], keywords)
                if gmail:
                    self.conn.remove_gmail_labels([row.uid], gmail)
            removed.update(on_message)  # gone with the folder, or taken away now
        for spelling in sorted(set(spellings) - set(on_message)):
            target = spelling.partition(":")[2]
            if row.message_id and self.conn.folder_exists(target):
                self.conn.select(target, readonly=False)
                uids = self.conn.uids_with_message_id(row.message_id)
                if uids and self.conn.can_expunge_one:
                    self.conn.expunge_one(uids[-1])  # one copy: ours, never more
            removed.add(spelling)
        with self.unit() as session:
            stored = session.get(st.StoredMessage, row.id)
            if stored is not None:
                stored.label_set = stored.label_set - removed
                session.add(stored)
            for spelling in removed:
                if BACKENDS[kind_of(spelling)].copies:
                    copy = session.get(st.LabelCopy, (row.id, spelling.partition(":")[2]))
                    if copy is not None:
                        session.delete(copy)

    # -- messages the guard had not seen --------------------------------------------------

    def link(self, session: Session, rows: Sequence[st.StoredMessage]) -> None:
        """Feedback given on a message before it was recorded joins its thread now (by
        its bytes); the thread's labels are worked out with it from the start."""
        found = st.unlinked_feedback(session, self.s.account, [r.content_hash for r in rows])
        if not found:
            return
        by_hash = {r.content_hash: r for r in rows}
        for feedback in found:
            row = by_hash[feedback.content_hash]
            feedback.thread_id = row.thread_id
            feedback.applied = True
            if not feedback.categories and feedback.kind == SAFE:
                feedback.category_list = row.category_list
            session.add(feedback)
            thread = st.get_thread(session, self.s.account, row.thread_id)
            if thread is None:
                thread = st.Thread(account=self.s.account, thread_id=row.thread_id)
                session.add(thread)
            session.flush()
            st.refresh_thread(session, thread)
