"""Labels in one scan: which labels threads want, and writing them to the server.

Owns the labels mode (resolved once per scan, see ``guard.mailbox.label_backends``), the
thread rows' risk and wanted labels, the labels each message still lacks (``label_pending``),
writing them through the backends (label-folder copies written ahead in the store, checked
by Message-ID after an interruption), keeping the originals of flagged threads first
(evidence), and in a dry run the plan of what would be written.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from sqlmodel import Session

from guard import store as st
from guard.mailbox import ImapError, Selected
from guard.mailbox import labels as labelling
from guard.mailbox.label_backends import LabelScheme, fixed_mode, keyword_mode, mode_fits
from guard.policy.model import UNCHECKED_RULE
from guard.reports import escalation
from guard.service.work import PlannedLabel, ScanPart, ScanWork

log = logging.getLogger("guard.service.scan")


class Labeller(ScanPart):
    """The labels of one scan."""

    def __init__(self, work: ScanWork) -> None:
        super().__init__(work)
        self.scheme: LabelScheme | None = None  # the labels mode, once resolved
        self.written: dict[int, set[str]] = defaultdict(set)  # message pk -> spellings

    def resolve_mode(self, selected: Selected | None) -> LabelScheme:
        """The labels mode, and so the backends labels are written through: chosen once,
        from the configuration, the server and (for keywords) the folder's PERMANENTFLAGS."""
        if self.scheme is not None:
            return self.scheme
        configured = self.s.label_mode
        mode = fixed_mode(configured, self.conn.is_gmail)
        if mode is None:
            if selected is None or (selected.readonly and not selected.permanent_flags):
                # EXAMINE shows no PERMANENTFLAGS: use what the last real scan found, else
                # look at INBOX (read-only in a dry run, where keywords are then assumed).
                with self.unit() as session:
                    state = st.get_folder_state(session, self.s.account, "INBOX")
                known = state.label_mode if state is not None else None
                if known and mode_fits(known, configured):
                    return self._use_mode(known)
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
            mode = keyword_mode(configured, allowed)
        return self._use_mode(mode)

    def _use_mode(self, mode: str) -> LabelScheme:
        self.scheme = LabelScheme.for_mode(mode, self.s.label_prefix, self.conn.delimiter)
        self.summary.label_mode = mode
        return self.scheme

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
        if thread is None:
            thread = st.Thread(account=account, thread_id=thread_id)
        risk, wanted = labelling.thread_labels(
            ((m.risk, m.category_list) for m in members),
            self.s.min_risk,
            safe=thread.safe_category_list,
            reported=thread.reported,
        )
        names = [label.name for label in wanted]
        cats = sorted({c for m in members for c in m.category_list})
        dates = [m.date for m in members if m.date is not None]
        thread.risk = risk
        thread.stage = escalation.thread_stage(members, self.s.min_risk).name
        thread.score = max((m.score for m in members), default=0.0)
        thread.category_list = cats
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
        thread.label_list = names
        session.add(thread)

    def spellings(self, wanted: frozenset[labelling.Label] | set[labelling.Label]) -> set[str]:
        return self.resolve_mode(None).spellings(wanted)

    def wanted_for(
        self, session: Session, row: st.StoredMessage, unchecked: set[int] | None = None
    ) -> set[str]:
        """The spellings ``row`` should carry: its thread's labels, plus Guard/Unchecked
        when its id is in ``unchecked`` (the messages with an unchecked finding)."""
        own = {labelling.UNCHECKED_LABEL} if unchecked and row.id in unchecked else set()
        thread = st.get_thread(session, row.account, row.thread_id)
        if thread is not None and thread.marked_safe:
            own = set()  # the user looked at it and said it is fine
        if thread is None or not thread.labels:
            return self.spellings(own) if own else set()
        by_name = {label.name: label for label in labelling.THREAD_LABELS}
        wanted = {by_name[n] for n in thread.label_list if n in by_name}
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
                stored.label_set = stored.label_set | spellings
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
        scheme = self.resolve_mode(None)
        for spelling, members in sorted(todo.items()):
            backend, value = scheme.backend(spelling)
            if not backend.copies:
                backend.add(self.conn, sorted({m.uid for m in members}), value)
            elif need := [m for m in members if not copies.get((m.id or 0, value), False)]:
                # a copy is a message of its own: written ahead in the store, marked done
                # once made (an interrupted scan looks for it before copying again)
                backend.prepare(self.conn, value)
                with self.unit() as session:
                    for m in need:
                        if (m.id or 0, value) not in copies:
                            session.add(st.LabelCopy(message_pk=m.id or 0, folder=value))
                backend.add(self.conn, sorted({m.uid for m in need}), value)
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
