"""Recording in one scan: judging fetched messages and storing them with their threads.

Owns turning a fetched message into a verdict (a message cut at ``max_message_bytes`` is
marked unchecked), recording a run of judged messages in one unit of work (message rows,
findings, thread assignment, originals kept as evidence, reply-draft candidates), retrying
message by message when the store refuses a run (the refused one is recorded as
unreadable), and re-matching messages already recorded under an older UIDVALIDITY.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace

from sqlmodel import Session

from guard import store as st
from guard.mail import Message, parse_message
from guard.mailbox import Fetched, Selected, threads
from guard.mailbox.label_backends import is_copy
from guard.policy import RuleSet, Verdict, evaluate, level_at_least
from guard.policy.feedback import Feedback, apply_feedback
from guard.policy.model import UNCHECKED_RULE, unchecked_finding
from guard.policy.stance import AGREE, DECLINE, reply_stance
from guard.policy.structural import is_trusted_platform_sender
from guard.reports import drafts
from guard.service.labelling import Labeller
from guard.service.work import FolderSummary, ScanPart, ScanWork

log = logging.getLogger("guard.service.scan")

Judged = tuple[Fetched, Message, Verdict, list[str]]  # a message read and judged


def _with_unchecked(verdict: Verdict, reason: str) -> Verdict:
    """``verdict`` with ``reason`` added to why the message was not read whole (one
    unchecked finding per message, naming every reason)."""
    reasons = (*verdict.unchecked, reason)
    kept = tuple(f for f in verdict.findings if f.rule != UNCHECKED_RULE)
    return replace(verdict, unchecked=reasons, findings=(*kept, unchecked_finding(reasons)))


def content_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _addresses(msg: Message) -> str:
    return st.join_commas(a.addr for a in (*msg.to, *msg.cc) if a.addr)[:4000]


class Recorder(ScanPart):
    """Judging and recording the new messages of one scan."""

    def __init__(self, work: ScanWork, rules: RuleSet, labeller: Labeller) -> None:
        super().__init__(work)
        self.rules = rules
        self.labeller = labeller
        self.stale_checked: dict[str, bool] = {}  # folder -> rows under another UIDVALIDITY
        self.draft_candidates: list[drafts.Candidate] = []
        self.taught = Feedback()  # what the user taught (guard.service.feedback)
        self.reported: set[str] = set()  # content hashes of the messages the user reported
        # called with the rows of each recorded run before their threads are labelled
        self.on_recorded: Callable[[Session, list[st.StoredMessage]], None] | None = None

    def judge(
        self, fetched: Fetched, with_feedback: bool = True
    ) -> tuple[Message, Verdict, list[str]]:
        msg = parse_message(fetched.raw)
        notes = list(msg.defects)
        verdict = evaluate(self.rules, msg)
        if (
            with_feedback
            and not self.taught.empty
            and content_hash(fetched.raw) not in self.reported
        ):
            verdict = apply_feedback(self.rules, verdict, msg, self.taught)
        if fetched.truncated:
            cut = (
                f"message is {fetched.size} bytes; only the first {len(fetched.raw)} were "
                "fetched and checked (imap.max_message_bytes)"
            )
            notes.append(cut)
            verdict = _with_unchecked(verdict, cut)
        notes.extend(verdict.notes)
        return msg, verdict, notes

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
                direction="out" if folder == self.work.sent_folder else "in",
                content_hash=digest,
                thread_id=threads.new_thread_id(digest, fetched.gm_thrid),
                date=received,
                internal_date=received,
                size=fetched.size,
                risk=verdict.risk,
                score=verdict.score,
                categories=st.join_commas(verdict.categories),
                notes=reason,
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            st.add_findings(session, row.id, [unchecked_finding([reason])])
            self.labeller.update_threads(session, self.s.account, {row.thread_id})
        fs.new_messages += 1
        if self.labels_level(verdict.risk):
            fs.risky += 1

    def record_judged(
        self, folder: str, selected: Selected, judged: list[Judged], fs: FolderSummary
    ) -> None:
        direction = "out" if folder == self.work.sent_folder else "in"
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
            if self.on_recorded is not None and added:
                self.on_recorded(session, [row for row, _v in added])
            self.labeller.update_threads(session, account, touched)

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
        stale.label_set = {x for x in stale.label_set if is_copy(x)}
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
            categories=st.join_commas(verdict.categories),
            notes=st.join_lines(notes),
            # the freelancer's own reply: does it decline, or go along with, leaving the
            # platform (the escalation ladder reads it, guard.reports.escalation)
            stance=self.stance(msg, verdict) if direction == "out" else "",
        )

    def stance(self, msg: Message, verdict: Verdict) -> str:
        found = reply_stance(self.rules, msg, verdict)
        return found if found in (DECLINE, AGREE) else ""
