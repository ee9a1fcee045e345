"""The daily digest: what the guard found since the last one, selected and rendered.

*Selection* reads the store: the risky threads the guard changed in the period
``(start, end]`` (``start`` is where the previous digest of the account ended, whatever
became of it), their messages, evidence and explanations. *Rendering* turns that into a
text and an HTML part with the Jinja2 templates in ``guard/reports/templates/``;
everything that came from mail is attacker-controlled, so it is stripped of control and
bidi characters, shortened, defanged (``hxxps://evil[.]example``: no client makes a link
of it; see :mod:`guard.reports.text`) and, in HTML, escaped by autoescaping. The HTML
carries no links, images, scripts or forms, and only inline CSS. *Building* stores the
digest as a ``digest`` row (both bodies, a fixed Message-ID) and commits it; sending the
pending rows over SMTP is :mod:`guard.reports.delivery`, the daily moment
:mod:`guard.reports.schedule`. One digest run per store and account at a time
(:func:`digest_lock`).

Times in the store are naive UTC; they are shown in ``digest.timezone``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TypedDict

import sqlalchemy as sa
from sqlmodel import Session, col, select

from guard import store as st
from guard.config import Config, DigestSettings, SmtpSettings
from guard.config import default_state_dir as _default_state_dir
from guard.errors import GuardError, Kind
from guard.locks import exclusive_lock, lock_file
from guard.mailbox.labels import CATEGORY_TITLES, LEVEL_TITLES
from guard.policy.model import CATEGORIES, LEVELS, UNCHECKED_EXPLANATION, UNCHECKED_RULE
from guard.reports import escalation, templating
from guard.reports.advice import ADVICE, NOT_LEGAL_ADVICE, SUGGESTED_REPLIES
from guard.reports.selection import (
    flagged_categories,
    hidden_as_safe,
    reported_threads,
    shown_categories,
    with_reported,
)
from guard.reports.smtp import new_message_id
from guard.reports.text import display_address, one_line, prose, safe_text
from guard.reports.views import (
    Advice,
    DigestContent,
    DigestMessage,
    DigestThread,
    Explanation,
    RenderedDigest,
    UncheckedMessage,
)

__all__ = [
    "MAX_MESSAGES",
    "MAX_THREADS",
    "DigestError",
    "build_digest",
    "digest_lock",
    "digest_settings",
    "digest_subject",
    "period_start",
    "preview",
    "render_digest",
    "select_digest",
    "store_digest",
    "utc_now",
]

MAX_THREADS = 50
"""Threads shown in one digest; the rest are counted (a first digest can cover months)."""
MAX_MESSAGES = 10
"""Messages shown per thread: the latest ones."""
MAX_EVIDENCE_PER_MESSAGE = 3
MAX_SUBJECT = 200
MAX_UNCHECKED = 50
"""Unchecked messages listed in one digest (the rest are counted)."""
RUN_STALE_AFTER = timedelta(hours=6)
"""An unfinished scan run older than this is taken as crashed (see :func:`_settled_end`)."""


class DigestError(GuardError):
    """The digest cannot be built or sent at all (not configured, another run holds the
    lock); one line fit for the journal."""

    kind = Kind.OUTPUT


# --------------------------------------------------------------------------- selection


def _levels_from(minimum: str) -> list[str]:
    return list(LEVELS[LEVELS.index(minimum) :])


def period_start(session: Session, account: str) -> datetime | None:
    """Where the next digest starts: the end of the latest digest of the account, whether
    it was sent, empty or is still pending (a pending one is retried, never re-covered)."""
    stmt = select(sa.func.max(st.Digest.period_end)).where(st.Digest.account == account)
    value = session.exec(stmt).one()
    return value if isinstance(value, datetime) else None


def _settled_end(session: Session, account: str, now: datetime) -> datetime:
    """The end of the period: ``now``, or the start of a scan that is still running.

    A scan stamps ``thread.updated_at`` when it processes a batch but commits a little
    later; a thread stamped before ``now`` and committed after the digest read it would
    fall between two digests. So while the account's latest scan run is unfinished, the
    period ends where that run started: whatever it changes goes into the next digest.
    Call it before reading the threads: a run's row is committed before it stamps
    anything, and a later read only sees more, so every stamp at or before the returned
    end is visible to that read. Scans of one account never overlap (scan lock), so only
    the latest run can be in progress; one unfinished for longer than RUN_STALE_AFTER
    crashed and is ignored.
    """
    stmt = (
        select(st.ScanRun)
        .where(st.ScanRun.account == account, col(st.ScanRun.dry_run).is_(False))
        .order_by(col(st.ScanRun.started_at).desc(), col(st.ScanRun.id).desc())
        .limit(1)
    )
    latest = session.exec(stmt).first()
    if (
        latest is not None
        and latest.finished_at is None
        and now - RUN_STALE_AFTER < latest.started_at < now
    ):
        return latest.started_at - timedelta(microseconds=1)
    return now


def _local(value: datetime | None, zone: tzinfo) -> str:
    if value is None:
        return ""
    return value.replace(tzinfo=UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _zone_name(zone: tzinfo, at: datetime) -> str:
    key = getattr(zone, "key", None)
    return str(key) if key else (zone.tzname(at.replace(tzinfo=UTC)) or "UTC")


class _Head(TypedDict):
    when: str
    direction: str
    sender: str
    subject: str
    folder: str


def _head(m: st.StoredMessage, zone: tzinfo) -> _Head:
    """What the digest shows of every message it lists, thread member or unchecked."""
    return _Head(
        when=_local(m.date or m.internal_date, zone),
        direction="out" if m.direction == "out" else "in",
        sender=display_address(m.sender_name, m.sender) or "(unknown sender)",
        subject=safe_text(m.subject, MAX_SUBJECT) or "(no subject)",
        folder=one_line(m.folder, 80),  # "INBOX.Sent" is a folder, not a host
    )


def _thread_categories(thread: st.Thread) -> tuple[str, ...]:
    """What the thread is shown as flagged for: not the categories the user marked safe."""
    return shown_categories(thread, flagged_categories(thread))


def _digest_threads(
    session: Session, account: str, start: datetime | None, end: datetime, levels: list[str]
) -> tuple[list[st.Thread], int, int]:
    """The threads a digest of ``(start, end]`` shows, and how many threads the user
    marked safe and reported in the period.

    The risky threads changed in the period, and the reported ones changed or reported
    in it whatever their risk; without those marked safe for everything they were
    flagged for. Feedback counts rows recorded in ``[start, end)`` (:func:`st.feedback_between`:
    consecutive periods count each row once), one per thread (or per message not recorded
    yet)."""
    given = st.feedback_between(session, account, start, end)
    safe = {f.thread_id or f"message {f.content_hash}" for f in given if f.kind == "safe"}
    reported = {f.thread_id or f"message {f.content_hash}" for f in given if f.kind == "report"}
    ids = [f.thread_id for f in given if f.kind == "report" and f.thread_id]
    threads = with_reported(
        st.threads_updated_between(session, account, start, end, levels),
        reported_threads(session, account, start=start, end=end, thread_ids=ids),
    )
    shown = [t for t in threads if not hidden_as_safe(t, flagged_categories(t))]
    # the most urgent stage of the escalation ladder first (riskiest first within one)
    order = {stage: i for i, stage in enumerate(escalation.URGENCY)}
    shown.sort(key=lambda t: order.get(t.stage, len(order)))
    return shown, len(safe), len(reported)


def _thread_view(
    session: Session,
    thread: st.Thread,
    number: int,
    start: datetime | None,
    end: datetime,
    zone: tzinfo,
) -> DigestThread:
    members = st.thread_messages(session, thread.account, thread.thread_id)
    report = session.get(st.ThreadReport, (thread.account, thread.thread_id))
    shown = members[-MAX_MESSAGES:]
    pks = [m.id for m in members if m.id is not None]
    findings = st.findings_for(session, pks)
    seen_evidence: set[str] = set()
    explanations: dict[str, Explanation] = {}
    messages: list[DigestMessage] = []
    shown_ids = {m.id for m in shown}
    safe = set(thread.safe_category_list)  # the user said these are fine on this thread
    for m in members:
        evidence: list[str] = []
        for f in findings.get(m.id or -1, []):
            if f.rule == UNCHECKED_RULE:  # listed in the digest's own unchecked section
                continue
            if f.category in safe:
                continue
            if f.rule not in explanations and f.explanation.strip():
                explanations[f.rule] = Explanation(
                    rule=one_line(f.rule, 80),
                    category=f.category,
                    title=CATEGORY_TITLES.get(f.category, safe_text(f.category, 40)),
                    text=safe_text(prose(f.explanation), 1000),
                )
            snippet = safe_text(f.evidence)
            key = snippet.casefold()
            # a quoted reply repeats the evidence of the message it quotes: show it once
            if snippet and key not in seen_evidence and len(evidence) < MAX_EVIDENCE_PER_MESSAGE:
                seen_evidence.add(key)
                evidence.append(snippet)
        if m.id not in shown_ids:
            continue
        new = m.first_seen_at <= end and (start is None or m.first_seen_at > start)
        messages.append(
            DigestMessage(
                **_head(m, zone),
                risk=m.risk if m.risk in LEVELS else "none",
                new=new,
                evidence=tuple(evidence),
            )
        )
    categories = _thread_categories(thread)
    reply_for = next((c for c in categories if c in SUGGESTED_REPLIES), None)
    risk = thread.risk if thread.risk in LEVEL_TITLES else "low"
    return DigestThread(
        number=number,
        subject=safe_text(thread.subject, MAX_SUBJECT) or "(no subject)",
        risk=risk,
        # a reported thread the guard did not flag is shown, but not as "low risk"
        risk_title=LEVEL_TITLES.get(thread.risk, "Not flagged"),
        score=thread.score,
        categories=categories,
        category_titles=tuple(CATEGORY_TITLES[c] for c in categories),
        first=_local(thread.first_date, zone),
        last=_local(thread.last_date, zone),
        messages=tuple(messages),
        hidden_messages=len(members) - len(shown),
        explanations=tuple(explanations.values()),
        advice=tuple(Advice(c, CATEGORY_TITLES[c], ADVICE[c]) for c in categories),
        suggested_reply=SUGGESTED_REPLIES[reply_for] if reply_for else None,
        reported=thread.reported,
        stage_title=escalation.TITLES.get(thread.stage, ""),
        stage_advice=escalation.ADVICE.get(thread.stage, ""),
        report=report.text if report is not None else "",
    )


def select_digest(
    session: Session,
    config: Config,
    account: str,
    start: datetime | None,
    end: datetime,
) -> DigestContent:
    """What a digest for ``(start, end]`` says (naive UTC times)."""
    zone = _zone(config)
    threads, marked_safe, reported = _digest_threads(
        session, account, start, end, _levels_from(config.policy.min_risk)
    )
    scanned, scans = st.scan_totals_between(session, account, start, end)
    unchecked = _unchecked_views(session, account, start, end, zone)
    views = tuple(
        _thread_view(session, t, i, start, end, zone)
        for i, t in enumerate(threads[:MAX_THREADS], 1)
    )
    levels = {risk: sum(1 for t in threads if t.risk == risk) for risk in reversed(LEVELS[1:])}
    categories: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
    for t in threads:
        for c in _thread_categories(t):
            categories[c] += 1
    return DigestContent(
        account=account,
        period_start=start,
        period_end=end,
        zone=_zone_name(zone, end),
        since=_local(start, zone),
        until=_local(end, zone),
        day=end.replace(tzinfo=UTC).astimezone(zone).date().isoformat(),
        scanned=scanned,
        scans=scans,
        threads=views,
        total_threads=len(threads),
        by_level=tuple((r, n) for r, n in levels.items() if n),
        by_category=tuple((c, CATEGORY_TITLES[c], n) for c, n in categories.items() if n),
        unchecked=tuple(unchecked[:MAX_UNCHECKED]),
        total_unchecked=len(unchecked),
        marked_safe=marked_safe,
        reported=reported,
    )


def _unchecked_views(
    session: Session, account: str, start: datetime | None, end: datetime, zone: tzinfo
) -> list[UncheckedMessage]:
    """Every message first seen in (start, end] that the guard could not read whole,
    whatever its risk: one line each, never left out because the message looked safe."""
    out: list[UncheckedMessage] = []
    seen: set[int] = set()
    for m, f in st.findings_of_rule_between(session, account, UNCHECKED_RULE, start, end):
        if m.id in seen:
            continue
        seen.add(m.id or 0)
        out.append(
            UncheckedMessage(
                **_head(m, zone),
                reason=safe_text(f.evidence) or "(no reason recorded)",
            )
        )
    return out


# --------------------------------------------------------------------------- rendering


_environment = templating.environment


def digest_subject(content: DigestContent) -> str:
    n = content.total_threads
    u = content.total_unchecked
    unread = f", {u} not read whole" if u else ""
    if n == 0:
        return f"inbox-guard: nothing risky{unread} — {content.day}"
    noun = "thread" if n == 1 else "threads"
    high = f" ({content.high} high)" if content.high else ""
    return f"inbox-guard: {n} risky {noun}{high}{unread} — {content.day}"


def render_digest(content: DigestContent) -> RenderedDigest:
    """Both parts and the subject line of a digest."""
    env = _environment()
    context = {
        "d": content,
        "subject": digest_subject(content),
        "level_titles": LEVEL_TITLES,
        "not_legal_advice": NOT_LEGAL_ADVICE,
        "unchecked_explanation": UNCHECKED_EXPLANATION,
    }
    text = env.get_template("digest.txt.j2").render(context)
    html = env.get_template("digest.html.j2").render(context)
    return RenderedDigest(subject=str(context["subject"]), text=text, html=html, content=content)


# --------------------------------------------------------------------------- building


def _zone(config: Config) -> tzinfo:
    if config.digest is not None:
        return config.digest.zone()
    return datetime.now().astimezone().tzinfo or UTC


def digest_settings(
    config: Config, account: str = "default"
) -> tuple[DigestSettings, SmtpSettings]:
    """``[digest]`` (with the account's own ``digest_to``, if any) and ``[smtp]``; raises
    :class:`DigestError` when either is missing."""
    if config.digest is None or config.smtp is None:
        raise DigestError("no digest configured: add [digest] and [smtp] to the configuration")
    override = next((a.digest_to for a in config.accounts if a.name == account), None)
    if override:  # this mailbox's digest goes to its own recipient
        return config.digest.model_copy(update={"to": override}), config.smtp
    return config.digest, config.smtp


def utc_now(now: datetime | None) -> datetime:
    """``now`` as naive UTC (as the store keeps times); the current time when None."""
    return st.as_utc_naive(now) or st.utcnow()


def preview(
    store: st.Store,
    config: Config,
    account: str = "default",
    since: datetime | None = None,
    now: datetime | None = None,
) -> RenderedDigest:
    """The digest that would be built now (or since ``since``), without storing anything.

    ``since`` may be aware or naive (naive means UTC). Works without ``[digest]``.
    """
    with store.session() as session:
        end = _settled_end(session, account, utc_now(now))
        start = st.as_utc_naive(since) if since is not None else period_start(session, account)
        return render_digest(select_digest(session, config, account, start, end))


def build_digest(
    store: st.Store, config: Config, account: str = "default", now: datetime | None = None
) -> st.Digest | None:
    """Store the digest for everything since the previous one, and commit it.

    The row is ``pending`` (to be sent by :func:`guard.reports.delivery.send_pending`),
    or ``empty`` when nothing was found and ``digest.send_empty`` is off: then it only
    records that the period was looked at. Returns None when there is no period to cover
    (a digest already ends at or after ``now``). No SMTP traffic happens here.
    """
    settings, _ = digest_settings(config, account)
    with digest_lock(store, account):
        return store_digest(store, config, settings, account, utc_now(now))


def store_digest(
    store: st.Store, config: Config, settings: DigestSettings, account: str, now: datetime
) -> st.Digest | None:
    """:func:`build_digest` for a caller that holds :func:`digest_lock` already."""
    with store.session() as session:
        end = _settled_end(session, account, now)  # first: see its docstring
        start = period_start(session, account)
        if start is not None and end <= start:
            return None
        rendered = render_digest(select_digest(session, config, account, start, end))
    send = rendered.threads > 0 or rendered.content.total_unchecked > 0 or settings.send_empty
    # Written in a transaction of its own: upgrading the read snapshot to a write would
    # fail on SQLite (SQLITE_BUSY_SNAPSHOT) if a scan committed meanwhile. The digest lock
    # keeps other digest runs from inserting a row in between.
    with store.session() as session:
        row = st.Digest(
            account=account,
            period_start=start,
            period_end=end,
            recipient=settings.to,
            subject=rendered.subject,
            message_id=new_message_id(settings.from_addr, now),
            text_body=rendered.text,
            html_body=rendered.html,
            threads=rendered.threads,
            status="pending" if send else "empty",
            created_at=now,
        )
        session.add(row)
    return row


# --------------------------------------------------------------------------- one run at a time


@contextmanager
def digest_lock(store: st.Store, account: str) -> Iterator[None]:
    """One digest run per store and account: a manual ``digest --send`` next to the
    daemon's job, or two daemons sharing a PostgreSQL store, must not send the same pending
    row twice or build two digests for one period. Refused (not waited for) when held.
    On PostgreSQL an advisory lock serves every machine; the file lock (without a writable
    place for it the run goes on without) serves one machine."""

    def busy(path: Path) -> DigestError:
        return DigestError(f"another digest run of this account is active (lock {path})")

    path = lock_file(st.sqlite_path(store.url), _default_state_dir(), account, "digest")
    try:
        # on PostgreSQL, across daemons too: the digest row is then built and sent by one
        with (
            st.advisory_lock(store.engine, f"digest:{account}"),
            exclusive_lock(path, busy, required=False, what="digest lock"),
        ):
            yield
    except st.Busy:
        raise DigestError("another digest run of this account is active (another daemon)") from None
