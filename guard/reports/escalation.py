"""The escalation ladder of an off-platform request: where a thread stands, and the report.

A freelancer is told to answer a client who wants to pay or talk outside the platform in
steps: decline politely (rung 1); if asked again, restate firmly that work and payment
stay on the platform (rung 2); if the client insists, report them and say so (rung 3),
keeping the record. The guard sees both sides of the thread (INBOX and Sent), so the
stage comes from the thread itself, in date order:

- a received message flagged for an off-platform request (at ``min_risk`` or above) is a
  *request*; the engine judges new text only, so a reply quoting an old request is not
  a new one;
- a sent message is a *decline* or an *agreement* by its stance
  (``guard.policy.stance``, stored per message);
- stages: ``asked`` (a request, not declined yet) → ``declined`` → ``asked_again`` (a
  request after one decline) → ``declined_twice`` → ``insists`` (a request after two
  declines; it stays there); ``agreed`` when the freelancer went along with it (shown
  first, with how to step back).

Drafts (``guard.reports.drafts``) follow the rung of the stage; the report
(:func:`report_text`) is made at rung 3 or on ``inbox-guard report THREAD``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from sqlmodel import Session

from guard import store as st
from guard.mail import parse_message
from guard.policy import level_at_least
from guard.policy.segment import split
from guard.reports.bundle import ExportError
from guard.reports.export import export_bundle
from guard.reports.selection import ThreadMatch
from guard.reports.text import one_line, safe_text

TRIGGERS = frozenset({"off_platform_payment", "off_platform_contact"})
DECLINE, AGREE = "decline", "agree"

ASKED, DECLINED, ASKED_AGAIN = "asked", "declined", "asked_again"
DECLINED_TWICE, INSISTS, AGREED = "declined_twice", "insists", "agreed"
RUNGS = {ASKED: 1, ASKED_AGAIN: 2, INSISTS: 3}
"""The draft each stage calls for: 1 the decline, 2 the firm restatement, 3 the notice."""
TEMPLATES = {1: "decline", 2: "firm", 3: "reported"}

# Most urgent first: the digest lists threads in this order.
URGENCY = (INSISTS, AGREED, ASKED_AGAIN, ASKED, DECLINED_TWICE, DECLINED, "")
TITLES = {
    INSISTS: "The client insists after you declined twice: report them",
    AGREED: "You agreed to move off the platform",
    ASKED_AGAIN: "Asked again after you declined",
    ASKED: "Asked to leave the platform",
    DECLINED_TWICE: "You declined twice",
    DECLINED: "You declined",
}
ADVICE = {
    INSISTS: (
        "Report the client through the platform's report form; the report below is ready "
        "to paste, and the evidence bundle named in it can be attached. A short notice "
        "that you reported them is in your Drafts folder."
    ),
    AGREED: (
        "Step back before any work or payment happens outside the platform: reply that you "
        "have to keep the contract, messages and payment on the platform, and do not send "
        "work, invoices or personal details elsewhere. If money already moved outside, "
        "contact the platform's support."
    ),
    ASKED_AGAIN: (
        "Restate, firmly and once, that all work and payment stay on the platform: a reply "
        "is in your Drafts folder. If they ask a third time, report them."
    ),
}


@dataclass(frozen=True)
class Stage:
    """Where a thread stands: ``name`` (one of the stages, "" for none), the rung of the
    draft it calls for (0: none), and the messages that made it so."""

    name: str
    requests: tuple[st.StoredMessage, ...] = ()
    answers: tuple[st.StoredMessage, ...] = ()  # the freelancer's declines and agreements

    @property
    def rung(self) -> int:
        return RUNGS.get(self.name, 0)


def is_request(row: st.StoredMessage, min_risk: str) -> bool:
    return (
        row.direction == "in"
        and row.risk != "none"
        and level_at_least(row.risk, min_risk)
        and bool(TRIGGERS.intersection(row.category_list))
    )


def _when(row: st.StoredMessage) -> datetime:
    return row.date or row.internal_date or row.first_seen_at


def thread_stage(members: Sequence[st.StoredMessage], min_risk: str) -> Stage:
    """The stage of a thread from its messages (see the module docstring)."""
    stage = ""
    declines = 0
    requests: list[st.StoredMessage] = []
    answers: list[st.StoredMessage] = []
    for row in sorted(members, key=lambda r: (_when(r), r.id or 0)):
        if row.direction == "out":
            if row.stance == AGREE:
                stage = AGREED
                answers.append(row)
            elif row.stance == DECLINE and stage in (ASKED, ASKED_AGAIN):
                declines += 1
                stage = DECLINED if declines == 1 else DECLINED_TWICE
                answers.append(row)
            continue
        if not is_request(row, min_risk):
            continue
        requests.append(row)
        if stage not in (AGREED, INSISTS):
            stage = ASKED if declines == 0 else ASKED_AGAIN if declines == 1 else INSISTS
    return Stage(stage, tuple(requests), tuple(answers))


# --------------------------------------------------------------------------- the report


def _stamp(value: datetime | None, zone: tzinfo) -> str:
    if value is None:
        return "(undated)"
    return value.replace(tzinfo=UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def report_text(
    stage: Stage,
    thread: st.Thread,
    quotes: dict[int, list[str]],
    *,
    platform: str,
    zone: tzinfo = UTC,
    bundle: str = "",
    bundle_sha256: str = "",
) -> str:
    """The plain-text report for the platform's form: who, when, what was asked (quoted,
    dated), what the freelancer answered, and the evidence bundle. ``quotes``: per message
    id, what it said (the findings' evidence for a request, its opening for an answer).
    Every value is mail text: the caller passes it cleaned to one line each."""
    declined = sum(1 for a in stage.answers if a.stance == DECLINE)
    client = next((r for r in stage.requests), None)
    who = "unknown sender"
    if client is not None:
        # the address as it is (not defanged): the platform's staff need it exact
        name, addr = one_line(client.sender_name, 80), one_line(client.sender, 200)
        who = f"{name} <{addr}>" if name else addr
    lines = [
        f"Report to {platform}: a client asked to take the work or payment off {platform}",
        "",
        f"Client: {who}",
        f"Conversation: {thread.subject or '(no subject)'}",
        f"Asked {len(stage.requests)} time(s); I declined {declined} time(s).",
        "",
        "What the client asked:",
    ]
    for row in stage.requests:
        lines.append(
            f"- {_stamp(_when(row), zone)}: "
            + (
                " / ".join(f'"{q}"' for q in quotes.get(row.id or 0, []))
                or f'(subject "{safe_text(row.subject, 200)}")'
            )
        )
    lines += ["", "What I answered:"]
    if not stage.answers:
        lines.append("- (no answer recorded)")
    for row in stage.answers:
        what = "declined" if row.stance == DECLINE else "agreed"
        said = " / ".join(f'"{q}"' for q in quotes.get(row.id or 0, []))
        lines.append(f"- {_stamp(_when(row), zone)}: {what}" + (f": {said}" if said else ""))
    lines.append("")
    if bundle:
        lines += [
            f"Evidence: the original messages are in {bundle} (attached),",
            f"MANIFEST.json SHA-256 {bundle_sha256}; anyone can check it with",
            f"`inbox-guard verify {bundle} --expect {bundle_sha256}`.",
        ]
    else:
        lines.append("Evidence: make a bundle with `inbox-guard export` and attach it.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- making it

MAX_QUOTE = 240
MAX_QUOTES = 3


def _opening(raw: bytes | None) -> str:
    """The first words of what a message itself says (quoted history and signature left
    out), from its original; "" when the original is not kept."""
    if raw is None:
        return ""
    msg = parse_message(raw)
    return safe_text(split(msg.text or msg.html_text or "").new, MAX_QUOTE)


def quotes_for(session: Session, stage: Stage) -> dict[int, list[str]]:
    """What each message of ``stage`` said: a request by its findings' evidence (what the
    rules matched), an answer by its opening; every quote made one safe line."""
    found = st.findings_for(session, [r.id for r in stage.requests if r.id is not None])
    quotes: dict[int, list[str]] = {}
    for row in stage.requests:
        seen: list[str] = []
        for f in found.get(row.id or 0, []):
            if f.category in TRIGGERS:
                text = safe_text(f.evidence, MAX_QUOTE)
                if text and text.casefold() not in {s.casefold() for s in seen}:
                    seen.append(text)
        quotes[row.id or 0] = seen[:MAX_QUOTES]
    for row in stage.answers:
        opening = _opening(st.evidence_bytes(session, row.content_hash))
        quotes[row.id or 0] = [opening] if opening else []
    return quotes


def make_report(
    store: st.Store,
    account: str,
    thread_id: str,
    *,
    min_risk: str,
    platform: str,
    out_dir: Path | None,
    zone: tzinfo = UTC,
    now: datetime | None = None,
) -> st.ThreadReport:
    """Write the report of one thread (and, with ``out_dir``, its evidence bundle, made
    from the originals the store keeps) and record it. Raises ExportError when the thread
    has no messages."""
    with store.session() as session:
        thread = st.get_thread(session, account, thread_id)
        members = st.thread_messages(session, account, thread_id)
        if thread is None or not members:
            raise ExportError(f"no thread {thread_id!r} in the store")
        stage = thread_stage(members, min_risk)
        quotes = quotes_for(session, stage)
    bundle, sha = "", ""
    if out_dir is not None:
        created = (st.as_utc_naive(now) or st.utcnow()).strftime("%Y%m%d-%H%M%S")
        safe_id = "".join(c if c.isalnum() else "-" for c in thread_id)[:40]
        path = out_dir / f"report-{safe_id}-{created}.zip"
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        match = ThreadMatch(
            account=account,
            thread_id=thread_id,
            subject=thread.subject,
            risk=thread.risk,
            messages=len(members),
            first_date=thread.first_date,
            last_date=thread.last_date,
        )
        result = export_bundle(store, [match], path, source=None, zone=zone, overwrite=True)
        bundle, sha = str(path), result.manifest_sha256
    clean_thread = st.Thread(
        account=account, thread_id=thread_id, subject=safe_text(thread.subject, 200)
    )
    text = report_text(
        stage, clean_thread, quotes, platform=platform, zone=zone, bundle=bundle, bundle_sha256=sha
    )
    with store.session() as session:
        row = session.get(st.ThreadReport, (account, thread_id))
        if row is None:
            row = st.ThreadReport(account=account, thread_id=thread_id, text=text)
        row.text, row.bundle, row.bundle_sha256 = text, bundle, sha
        row.created_at = st.utcnow()
        session.add(row)
    return row
