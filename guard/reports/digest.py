"""The daily digest: what the guard found since the last one, rendered and mailed.

Three steps, each usable on its own. *Selection* reads the store: the risky threads the
guard changed in the period ``(start, end]`` (``start`` is where the previous digest of the
account ended, whatever became of it), their messages, evidence and explanations.
*Rendering* turns that into a text and an HTML part with the Jinja2 templates in
``guard/reports/templates/``; everything that came from mail is attacker-controlled, so it is
stripped of control and bidi characters, shortened, defanged (``hxxps://evil[.]example``:
no client makes a link of it) and, in HTML, escaped by autoescaping. The HTML carries no
links, images, scripts or forms, and only inline CSS. *Sending* is two-phase: the digest
is first stored as a ``digest`` row (both bodies, a fixed Message-ID) and committed, then
every pending row is sent over SMTP and marked ``sent`` as soon as the server has accepted
it. A failure leaves the row ``pending`` with a one-line ``last_error`` and is retried by
the next :func:`send_pending`; nothing is lost, and a resend can only happen in the short
window explained in :func:`_send_rows`.

Times in the store are naive UTC; they are shown in ``digest.timezone``.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import re
import secrets
import smtplib
import socket
import ssl
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path

import idna
import sqlalchemy as sa
from sqlmodel import Session, col, select

from guard import store as st
from guard.config import Config, ConfigError, DigestSettings, Secret, SmtpSettings
from guard.config import default_state_dir as _default_state_dir
from guard.errors import GuardError, Kind
from guard.mailbox.labels import CATEGORY_TITLES, LEVEL_TITLES
from guard.policy.model import CATEGORIES, LEVELS, UNCHECKED_EXPLANATION, UNCHECKED_RULE
from guard.reports import templating

__all__ = [
    "ADVICE",
    "SUGGESTED_REPLIES",
    "Advice",
    "DigestContent",
    "DigestError",
    "DigestRun",
    "Explanation",
    "MessageView",
    "RenderedDigest",
    "SendResult",
    "ThreadView",
    "build_digest",
    "compose_message",
    "defang",
    "digest_slot",
    "due",
    "period_start",
    "preview",
    "render_digest",
    "run_digest",
    "safe_text",
    "select_digest",
    "send_pending",
    "summarize",
]

log = logging.getLogger(__name__)

MAX_THREADS = 50
"""Threads shown in one digest; the rest are counted (a first digest can cover months)."""
MAX_MESSAGES = 10
"""Messages shown per thread: the latest ones."""
MAX_EVIDENCE_PER_MESSAGE = 3
MAX_SNIPPET = 240
MAX_SUBJECT = 200
MAX_SENDER = 160
RUN_STALE_AFTER = timedelta(hours=6)
"""An unfinished scan run older than this is taken as crashed (see :func:`_settled_end`)."""


class DigestError(GuardError):
    """The digest cannot be built or sent at all (not configured, another run holds the
    lock); one line fit for the journal."""

    kind = Kind.OUTPUT


# --------------------------------------------------------------------------- mail text safety

# ANSI/VT escape sequences (CSI, OSC ... BEL/ST, two-character escapes), then everything else
# a terminal or renderer acts on or hides: C0/C1 controls, bidi embeddings, overrides and
# isolates, zero-width and other format characters, line separators, lone surrogates, tags.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]{0,256}(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_BREAKS = re.compile("[\t\n\v\f\r\x85\u2028\u2029]")

# Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt): characters
# a renderer shows as nothing, whether or not they are assigned yet. Python has no lookup
# for the property, so it is listed here and joined with every format character (Cf) of
# the running Python's Unicode tables (Cf lives in planes 0, 1 and 14 only).
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)  # fmt: skip
# Also gone: C0/C1 controls, lone surrogates, and the interlinear annotation marks.
_ALSO_HIDDEN = ((0x00, 0x1F), (0x7F, 0x9F), (0xD800, 0xDFFF), (0xFFF9, 0xFFFB))


def _char_class(points: set[int]) -> str:
    runs: list[list[int]] = []
    for c in sorted(points):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in runs
    )


def _unicode_classes() -> tuple[str, str]:
    """(characters to remove, marks and symbols that can be part of a domain label)."""
    hidden = {c for lo, hi in (*_DEFAULT_IGNORABLE, *_ALSO_HIDDEN) for c in range(lo, hi + 1)}
    marks: set[int] = set()
    for plane in (range(0x80, 0x20000), range(0xE0000, 0xE1000)):
        for c in plane:
            category = unicodedata.category(chr(c))
            if category == "Cf":
                hidden.add(c)
            elif category[0] == "M" or category == "So":  # accents, vowel signs, emoji
                marks.add(c)
    return _char_class(hidden), _char_class(marks - hidden)


_HIDDEN_CLASS, _MARK_CLASS = _unicode_classes()
_INVISIBLE = re.compile(f"[{_HIDDEN_CLASS}]")
_SPACES = re.compile(r"\s+")

# Defanging. A host is dot-separated labels ending in an alphabetic (or punycode) TLD; the
# ideographic and full-width dots count, since IDNA maps them to "." in browsers.
_DOT = "[.\u3002\uff0e\uff61]"
# Labels may start or end with "_" or "-" (resolvers and some browsers accept
# "_evil.example"); a host ends where no letter or digit follows, unless what follows is
# the local part of an e-mail address ("john.doe@"), which is not a host.
_LC = rf"[\w{_MARK_CLASS}-]"  # a character of a label
_LABEL = rf"{_LC}+"
_TLD = rf"(?:[^\W\d_](?:[^\W\d_]|[{_MARK_CLASS}]){{1,62}}|[xX][nN]--[a-zA-Z0-9-]{{1,59}})"
_HOST = rf"(?:{_LABEL}{_DOT})+{_TLD}"
_IPV4 = r"\d{1,3}(?:" + _DOT + r"\d{1,3}){3}"
# A host is only looked for where a run of labels starts (not after "label."): a long
# "a.a.a.a…1" is then tried once, in linear time, instead of once per label.
_HOST_START = rf"(?<!{_LC})(?<!{_LC}{_DOT})"
_END = r"(?![^\W_])(?![\w-]*@)"
_DEFANG = re.compile(
    # a URL with an authority: scheme://[user@]host[:port] then the rest up to white space
    r"(?P<scheme>(?<![a-zA-Z])[a-zA-Z][a-zA-Z0-9+-]{0,30})://(?P<authority>[^\s/?#<>\"'`\\]*)"
    r"(?P<rest>[^\s<>\"'`]*)"
    # schemes that run code or carry a document without "//"
    r"|(?P<pseudo>\b(?i:javascript|vbscript|data(?=:\w+/)))\s*:"
    # a bare host name, also the domain of an e-mail address (the local part stays)
    rf"|{_HOST_START}(?P<host>{_HOST}){_END}|(?<![\w-])(?P<ip>{_IPV4}){_END}"
)
_HOST_ONLY = re.compile(rf"{_HOST_START}{_HOST}{_END}")
_SCHEMES = {"http": "hxxp", "https": "hxxps", "ftp": "fxp", "ftps": "fxps", "ws": "wxs"}
_SCHEMES["wss"] = "wxss"
_DEFANGED_SCHEMES = frozenset(_SCHEMES.values())
# a dot that is not already bracketed as "[.]"
_RAW_DOT = re.compile(rf"(?<!\[){_DOT}|{_DOT}(?!\])")
_MAX_PASSES = 8


def _defang_dots(text: str) -> str:
    return _RAW_DOT.sub("[.]", text)


def _defang_match(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    if scheme is not None:
        lower = scheme.lower()
        if lower in _SCHEMES:
            head = _SCHEMES[lower] + "://"
        elif lower in _DEFANGED_SCHEMES:
            head = scheme + "://"
        else:  # skype://, viber://, tg://... are links in some clients too
            head = scheme + "[:]//"
        authority = _defang_dots(match.group("authority"))
        rest = _HOST_ONLY.sub(lambda m: _defang_dots(m.group()), match.group("rest"))
        return head + authority + rest
    pseudo = match.group("pseudo")
    if pseudo is not None:
        return pseudo + "[:]"
    return _defang_dots(match.group("host") or match.group("ip"))


def defang(text: str) -> str:
    """Break every link a mail client or phone could make of ``text``, readably.

    ``https://pay.example.com/x`` → ``hxxps://pay[.]example[.]com/x``; a bare
    ``www.evil.example`` → ``www[.]evil[.]example``; ``bob@evil.example`` →
    ``bob@evil[.]example``; ``_evil.example_`` → ``_evil[.]example_``; IP addresses and
    punycode or Unicode domains alike, a Unicode one followed by its punycode
    (``pаypal[.]com (xn--pypal-4ve[.]com)``); ``javascript:`` → ``javascript[:]``.
    Over-eager on purpose: ``invoice.zip`` becomes ``invoice[.]zip`` (and ``.zip`` is a
    real top-level domain).

    Defanged text comes back unchanged: the substitution is repeated until nothing
    changes (one pass almost always; a crafted string such as ``x.https://`` can expose
    a new match once the first is bracketed), so ``defang(defang(t)) == defang(t)``.
    """
    for _ in range(_MAX_PASSES):
        result = _DEFANG.sub(_defang_match, text)
        if result == text:
            break
        text = result
    return _with_punycode(text)


# A host as defang() leaves it: labels joined by "[.]".
_DEFANGED_HOST = re.compile(rf"(?<!{_LC})(?:{_LABEL}\[\.\])+{_LABEL}")


def _ace_label(label: str) -> str:
    """One label as the DNS sees it: IDNA 2008 with UTS #46 mapping (what browsers do),
    else IDNA 2003 (emoji domains), else the bare Punycode of the letters as written;
    never an exception."""
    if label.isascii():
        return label.lower()
    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        pass
    try:
        return label.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    try:
        return "xn--" + label.lower().encode("punycode").decode("ascii")
    except UnicodeError:
        return "xn--?"


def _ace_host(host: str) -> str:
    return "[.]".join(_ace_label(label) for label in host.split("[.]"))


def _punycode_beside(match: re.Match[str]) -> str:
    host = match.group()
    if host.isascii():
        return host
    note = f" ({_ace_host(host)})"
    if match.string.startswith(note, match.end()):
        return host  # already annotated: defang() stays idempotent
    return host + note


def _with_punycode(text: str) -> str:
    """``pаypal[.]com`` (a Cyrillic "а") → ``pаypal[.]com (xn--pypal-4ve[.]com)``: a
    non-ASCII host is followed by the name the DNS is asked for, so look-alike letters
    cannot pass for the real domain."""
    if text.isascii():
        return text
    return _DEFANGED_HOST.sub(_punycode_beside, text)


def _plain(text: str | None, limit: int) -> str:
    """One line without escape sequences, control, bidi or invisible characters."""
    if not text:
        return ""
    text = _ANSI.sub("", text)
    text = _BREAKS.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def safe_text(text: str | None, limit: int = MAX_SNIPPET) -> str:
    """Mail-supplied text as one safe line: escape sequences and control, bidi and
    invisible characters removed, white space collapsed, shortened to ``limit``
    characters (with "…"), then :func:`defang`-ed. HTML escaping is the template's job."""
    return defang(_plain(text, limit))


# --------------------------------------------------------------------------- advice

ADVICE: dict[str, tuple[str, ...]] = {
    "off_platform_payment": (
        "Decline politely and keep the contract and every payment on the platform: escrow "
        "only protects payments made through it, and paying outside breaks its terms of "
        "service (accounts get suspended for it).",
        "Do not send PayPal, bank or card details: the platform pays you.",
        "If the client insists, report them to the platform.",
    ),
    "off_platform_contact": (
        "Keep the conversation on the platform: its messages are your record if anything "
        "goes wrong, and moving to WhatsApp, Telegram or Skype before a contract is the usual "
        "first step of scams and off-platform deals.",
        "Do not give out your phone number or personal address; decline politely.",
        "If the client insists, report them to the platform.",
    ),
    "contact_request": (
        "Do not send your personal e-mail, phone number or home address: the work can be "
        "done through the platform.",
        "Never send ID scans, bank logins or verification codes; no genuine client needs them.",
    ),
    "personal_data": (
        "Never send ID or passport scans, bank or platform logins, or one-time codes, "
        "whatever reason is given.",
        "If you already did: change the password, call your bank, and report the message "
        "to the platform.",
    ),
    "scam": (
        "Never pay for equipment, software, training or a 'starter kit' to get work.",
        "A cheque or transfer that overpays you, with a request to send the difference back, "
        "is fake: it bounces after you have sent your own money.",
        "Stop replying and report the sender to the platform.",
    ),
    "phishing": (
        "Do not click links or open attachments in this message.",
        "To check your account, type the platform's address yourself or use its app; never "
        "log in from a link in an e-mail.",
        "Report the message to the platform (and as phishing in your mail client). If you "
        "already entered a password, change it now and turn on two-factor authentication.",
    ),
    "dispute": (
        "Keep every message unaltered, with its date: delete or edit nothing, and export "
        "the conversation if the platform allows it.",
        "Answer factually and calmly; stick to what the contract says.",
        "Use the platform's dispute or resolution process rather than settling outside it.",
    ),
}

SUGGESTED_REPLIES: dict[str, str] = {
    "off_platform_payment": (
        "Hello, thank you for the offer. I keep all contracts and payments on the platform: "
        "its escrow protects both of us, and paying outside it would break its terms for "
        "both of us. I'm happy to go ahead here; please send the offer through the platform "
        "and I'll get started. Best regards"
    ),
    "off_platform_contact": (
        "Hello, thank you for reaching out. I prefer to keep our conversation on the "
        "platform: it keeps a clear record for both of us, and its terms ask for it. I'm "
        "happy to discuss every detail here. Best regards"
    ),
}

NOT_LEGAL_ADVICE = "Practical advice, not legal advice."


# --------------------------------------------------------------------------- what a digest holds


@dataclass(frozen=True)
class MessageView:
    """One message of a thread as the digest shows it (all text already made safe)."""

    when: str  # local time, "" when the message had no date
    direction: str  # "in" or "out" (found in the Sent folder)
    sender: str
    subject: str
    folder: str
    risk: str
    new: bool  # first seen in this digest's period
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Explanation:
    rule: str
    category: str
    title: str
    text: str


@dataclass(frozen=True)
class Advice:
    category: str
    title: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class ThreadView:
    number: int
    subject: str
    risk: str
    risk_title: str
    score: float
    categories: tuple[str, ...]
    category_titles: tuple[str, ...]
    first: str
    last: str
    messages: tuple[MessageView, ...]
    hidden_messages: int  # earlier messages of the thread not shown
    explanations: tuple[Explanation, ...]
    advice: tuple[Advice, ...]
    suggested_reply: str | None


@dataclass(frozen=True)
class UncheckedView:
    """A message the guard could not read whole (all text already made safe)."""

    when: str
    direction: str
    sender: str
    subject: str
    folder: str
    reason: str  # why, as the unchecked finding says ("more than 1000 MIME parts; ...")


MAX_UNCHECKED = 50  # unchecked messages listed in one digest (the rest are counted)


@dataclass(frozen=True)
class DigestContent:
    """Everything a digest says, before rendering."""

    account: str
    period_start: datetime | None  # naive UTC; None: since the beginning
    period_end: datetime  # naive UTC
    zone: str
    since: str  # local time text of period_start, "" when None
    until: str
    day: str  # local date of period_end, YYYY-MM-DD
    scanned: int  # new messages scanned in the period
    scans: int
    threads: tuple[ThreadView, ...]  # at most MAX_THREADS
    total_threads: int
    by_level: tuple[tuple[str, int], ...]  # (risk, threads), riskiest first, counts > 0
    by_category: tuple[tuple[str, str, int], ...]  # (category, title, threads)
    unchecked: tuple[UncheckedView, ...] = ()  # at most MAX_UNCHECKED, oldest first
    total_unchecked: int = 0  # messages first seen in the period that were not read whole

    @property
    def hidden_unchecked(self) -> int:
        return self.total_unchecked - len(self.unchecked)

    @property
    def high(self) -> int:
        return dict(self.by_level).get("high", 0)

    @property
    def hidden_threads(self) -> int:
        return self.total_threads - len(self.threads)


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    text: str
    html: str
    content: DigestContent

    @property
    def threads(self) -> int:
        return self.content.total_threads


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


def _sender(message: st.StoredMessage) -> str:
    address = safe_text(message.sender, MAX_SENDER)
    name = safe_text(message.sender_name, MAX_SENDER)
    if name and address and name.lower() != address.lower():
        return f"{name} <{address}>"
    return address or name or "(unknown sender)"


def _thread_categories(thread: st.Thread) -> tuple[str, ...]:
    # labels name the categories of the messages at or above min_risk (what got labelled);
    # the categories column has those of every message of the thread.
    names = {n for n in thread.labels.split("\n") if n in CATEGORY_TITLES}
    if not names:
        names = {c for c in thread.categories.split(",") if c in CATEGORY_TITLES}
    return tuple(c for c in CATEGORIES if c in names)


def _prose(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _thread_view(
    session: Session,
    thread: st.Thread,
    number: int,
    start: datetime | None,
    end: datetime,
    zone: tzinfo,
) -> ThreadView:
    members = st.thread_messages(session, thread.account, thread.thread_id)
    shown = members[-MAX_MESSAGES:]
    pks = [m.id for m in members if m.id is not None]
    findings = st.findings_for(session, pks)
    seen_evidence: set[str] = set()
    explanations: dict[str, Explanation] = {}
    messages: list[MessageView] = []
    shown_ids = {m.id for m in shown}
    for m in members:
        evidence: list[str] = []
        for f in findings.get(m.id or -1, []):
            if f.rule == UNCHECKED_RULE:  # listed in the digest's own unchecked section
                continue
            if f.rule not in explanations and f.explanation.strip():
                explanations[f.rule] = Explanation(
                    rule=_plain(f.rule, 80),
                    category=f.category,
                    title=CATEGORY_TITLES.get(f.category, safe_text(f.category, 40)),
                    text=safe_text(_prose(f.explanation), 1000),
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
            MessageView(
                when=_local(m.date or m.internal_date, zone),
                direction="out" if m.direction == "out" else "in",
                sender=_sender(m),
                subject=safe_text(m.subject, MAX_SUBJECT) or "(no subject)",
                folder=_plain(m.folder, 80),  # "INBOX.Sent" is a folder, not a host
                risk=m.risk if m.risk in LEVELS else "none",
                new=new,
                evidence=tuple(evidence),
            )
        )
    categories = _thread_categories(thread)
    reply_for = next((c for c in categories if c in SUGGESTED_REPLIES), None)
    risk = thread.risk if thread.risk in LEVEL_TITLES else "low"
    return ThreadView(
        number=number,
        subject=safe_text(thread.subject, MAX_SUBJECT) or "(no subject)",
        risk=risk,
        risk_title=LEVEL_TITLES[risk],
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
    threads = st.threads_updated_between(
        session, account, start, end, _levels_from(config.policy.min_risk)
    )
    scanned, scans = st.scan_totals_between(session, account, start, end)
    unchecked = _unchecked_views(session, account, start, end, zone)
    views = tuple(
        _thread_view(session, t, i, start, end, zone)
        for i, t in enumerate(threads[:MAX_THREADS], 1)
    )
    levels = {risk: sum(1 for t in threads if t.risk == risk) for risk in reversed(LEVELS)}
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
    )


def _unchecked_views(
    session: Session, account: str, start: datetime | None, end: datetime, zone: tzinfo
) -> list[UncheckedView]:
    """Every message first seen in (start, end] that the guard could not read whole,
    whatever its risk: one line each, never left out because the message looked safe."""
    out: list[UncheckedView] = []
    seen: set[int] = set()
    for m, f in st.findings_of_rule_between(session, account, UNCHECKED_RULE, start, end):
        if m.id in seen:
            continue
        seen.add(m.id or 0)
        out.append(
            UncheckedView(
                when=_local(m.date or m.internal_date, zone),
                direction="out" if m.direction == "out" else "in",
                sender=_sender(m),
                subject=safe_text(m.subject, MAX_SUBJECT) or "(no subject)",
                folder=_plain(m.folder, 80),
                reason=safe_text(f.evidence) or "(no reason recorded)",
            )
        )
    return out


# --------------------------------------------------------------------------- rendering


_environment = templating.environment
_wrap = templating.wrap


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


def _digest_settings(
    config: Config, account: str = "default"
) -> tuple[DigestSettings, SmtpSettings]:
    if config.digest is None or config.smtp is None:
        raise DigestError("no digest configured: add [digest] and [smtp] to the configuration")
    override = next((a.digest_to for a in config.accounts if a.name == account), None)
    if override:  # this mailbox's digest goes to its own recipient
        return config.digest.model_copy(update={"to": override}), config.smtp
    return config.digest, config.smtp


def _now(now: datetime | None) -> datetime:
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
        end = _settled_end(session, account, _now(now))
        start = st.as_utc_naive(since) if since is not None else period_start(session, account)
        return render_digest(select_digest(session, config, account, start, end))


def build_digest(
    store: st.Store, config: Config, account: str = "default", now: datetime | None = None
) -> st.Digest | None:
    """Store the digest for everything since the previous one, and commit it.

    The row is ``pending`` (to be sent by :func:`send_pending`), or ``empty`` when nothing
    was found and ``digest.send_empty`` is off: then it only records that the period was
    looked at. Returns None when there is no period to cover (a digest already ends at or
    after ``now``). No SMTP traffic happens here.
    """
    settings, _ = _digest_settings(config, account)
    with _digest_lock(store, account):
        return _build_locked(store, config, settings, account, _now(now))


def _build_locked(
    store: st.Store, config: Config, settings: DigestSettings, account: str, now: datetime
) -> st.Digest | None:
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
            message_id=_new_message_id(settings.from_addr, now),
            text_body=rendered.text,
            html_body=rendered.html,
            threads=rendered.threads,
            status="pending" if send else "empty",
            created_at=now,
        )
        session.add(row)
    return row


def _new_message_id(from_addr: str, now: datetime) -> str:
    """``<digest-20261121T070000-<random>@<from domain>>``: unique, and short enough that
    the header is never folded (a folded Message-ID trips some parsers)."""
    domain = parseaddr(from_addr)[1].rpartition("@")[2].strip().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii") if domain else ""
    except UnicodeError:
        domain = ""
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,60}", domain):
        domain = "inbox-guard.invalid"
    return f"<digest-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(6)}@{domain}>"


# --------------------------------------------------------------------------- when it is due


def digest_slot(settings: DigestSettings, now: datetime) -> datetime:
    """Today's digest moment as naive UTC: ``digest.time`` on the local date of ``now``
    in ``digest.timezone``. A time skipped by a DST change counts as the moment after the
    gap (02:30 on a spring-forward night is 03:30); a repeated one as its first occurrence.
    """
    zone = settings.zone()
    utc_now = (st.as_utc_naive(now) or now).replace(tzinfo=UTC)
    local_day = utc_now.astimezone(zone).date()
    local = datetime.combine(local_day, settings.time).replace(tzinfo=zone)  # fold=0
    return local.astimezone(UTC).replace(tzinfo=None)


def due(
    store: st.Store, config: Config, account: str = "default", now: datetime | None = None
) -> bool:
    """True when today's digest moment has passed and no digest was built since it.

    For the catch-up at start: a daemon that was down at the digest time builds one
    digest when it comes back, whatever the number of days missed (the digest covers the
    whole time since the previous one). Before today's moment it is not due, even when
    yesterday's was missed: today's digest will cover that time a few hours later.
    """
    if config.digest is None or config.smtp is None:
        return False
    now = _now(now)
    slot = digest_slot(config.digest, now)
    if now < slot:
        return False
    with store.session() as session:
        stmt = select(sa.func.max(st.Digest.created_at)).where(st.Digest.account == account)
        latest = session.exec(stmt).one()
    return not (isinstance(latest, datetime) and latest >= slot)


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class SendResult:
    """What became of one pending digest in :func:`send_pending`."""

    digest_id: int
    recipient: str
    subject: str
    sent: bool
    attempts: int
    error: str | None = None  # one line, never a secret; set when not sent or not recorded

    def __str__(self) -> str:
        if self.sent and self.error is None:
            return f"digest {self.digest_id} sent to {self.recipient}"
        if self.sent:
            return f"digest {self.digest_id} sent to {self.recipient}, but {self.error}"
        return (
            f"digest {self.digest_id} not sent (attempt {self.attempts}, will retry): {self.error}"
        )


@dataclass(frozen=True)
class DigestRun:
    """What :func:`run_digest` did: the row it built (if any) and the sending results."""

    built: st.Digest | None
    results: tuple[SendResult, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(r.sent and r.error is None for r in self.results)

    def __str__(self) -> str:
        parts = []
        if self.built is not None:
            what = "empty, not sent" if self.built.status == "empty" else "pending"
            n = self.built.threads
            noun = "thread" if n == 1 else "threads"
            parts.append(f"digest {self.built.id} built ({n} {noun}, {what})")
        if self.results:
            parts.append(summarize(self.results))
        return "; ".join(parts) or "nothing to do"


def summarize(results: Sequence[SendResult]) -> str:
    """One line for the journal about a :func:`send_pending` call."""
    if not results:
        return "no digest to send"
    sent = [r for r in results if r.sent]
    failed = [r for r in results if not r.sent]
    unrecorded = [r for r in sent if r.error]
    if not failed and not unrecorded:
        if len(sent) == 1:
            return str(sent[0])
        return f"{len(sent)} digests sent to {sent[0].recipient}"
    if not sent:
        if len(failed) == 1:
            return str(failed[0])
        return f"{len(failed)} digests not sent (will retry): {failed[0].error}"
    first = (failed or unrecorded)[0]
    return f"{len(sent)} of {len(results)} digests sent; {first}"


class _SendFailure(GuardError):
    """A clean one-line reason; ``connection_lost``: the rest cannot go on this session."""

    def __init__(self, line: str, *, connection_lost: bool) -> None:
        super().__init__(line)
        self.line = line
        self.connection_lost = connection_lost


class _Redactor:
    """Removes every spelling of the login secrets from server text before it is kept."""

    def __init__(self) -> None:
        self._forms: list[str] = []

    def add(self, *values: str) -> None:
        for value in values:
            if not value:
                continue
            raw = value.encode()
            self._forms += [value, base64.b64encode(raw).decode(), raw.hex()]

    def __call__(self, text: str) -> str:
        for form in sorted(self._forms, key=len, reverse=True):
            text = text.replace(form, "***")
        return text


def _server_text(resp: bytes | str, redact: _Redactor) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return _plain(redact(text), 200)


def _enhanced(resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    match = re.match(r"\s*([245]\.\d{1,3}\.\d{1,3})\b", text)
    return f" {match.group(1)}" if match else ""


def _describe(exc: BaseException, smtp: SmtpSettings, redact: _Redactor, doing: str) -> str:
    """One clean line for an SMTP or network failure. Server replies to AUTH are never
    repeated (a server may echo the credentials it was given), only their codes."""
    where = f"{smtp.host}:{smtp.port}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return (
            f"SMTP login as {_plain(smtp.username, 100)} refused by {where} "
            f"({exc.smtp_code}{_enhanced(exc.smtp_error)}); check the {smtp.SECTION} password"
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [f"{c}{_enhanced(r)} {_server_text(r, redact)}" for c, r in exc.recipients.values()]
        return f"{where} refused the recipient: {'; '.join(codes) or 'no reason given'}"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return f"{where} refused the sender: {exc.smtp_code} {_server_text(exc.smtp_error, redact)}"
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = f"{exc.smtp_code} {_server_text(exc.smtp_error, redact)}"
        return f"{where} refused {doing}: {reply}"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return f"{where}: {_plain(redact(str(exc)), 200)} ({doing})"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib turns a read timeout into "disconnected"; the timeout is its context
        if isinstance(exc.__context__, TimeoutError) or "timed out" in str(exc):
            return f"{where} did not answer within {smtp.timeout:g} s while {doing}"
        return f"{where} closed the connection while {doing}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or "verification failed"
        hint = "" if smtp.ca_file else "; set smtp.ca_file for a private CA"
        return f"TLS certificate of {where} not accepted: {reason}{hint}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {where} failed while {doing}: {exc.reason or type(exc).__name__}"
    if isinstance(exc, smtplib.SMTPException):
        return f"SMTP error with {where} while {doing}: {_plain(redact(str(exc)), 200)}"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer within {smtp.timeout:g} s while {doing}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {smtp.host}: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        return f"cannot reach {where} while {doing}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, UnicodeError):  # its text would quote a character of the password
        return f"cannot send non-ASCII text to {where} while {doing} (user name or password?)"
    return f"{type(exc).__name__} while {doing}"


def _connection_lost(exc: BaseException) -> bool:
    # SMTPException derives from OSError: a plain OSError is the socket itself failing.
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)


def _open(smtp: SmtpSettings, redact: _Redactor) -> smtplib.SMTP:
    """Connect, secure and log in as ``[smtp]`` says, or raise a :class:`_SendFailure`."""
    context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
    doing = "connecting"
    client: smtplib.SMTP | None = None
    try:
        if smtp.tls == "implicit":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
            if smtp.tls == "starttls":
                doing = "starting TLS"
                client.ehlo()
                if not client.has_extn("starttls"):
                    raise _SendFailure(
                        f"{smtp.host}:{smtp.port} does not offer STARTTLS; not sending in clear "
                        '(use tls = "implicit" if the port expects TLS at once)',
                        connection_lost=True,
                    )
                client.starttls(context=context)
                client.ehlo()
        doing = "logging in"
        _login(client, smtp, redact)
        return client
    except _SendFailure:
        _close(client)
        raise
    except ConfigError as exc:  # the secret could not be fetched; the text names no secret
        _close(client)
        raise _SendFailure(str(exc), connection_lost=True) from None
    except (smtplib.SMTPException, OSError, UnicodeError) as exc:
        _close(client)
        raise _SendFailure(_describe(exc, smtp, redact, doing), connection_lost=True) from None


def _login(client: smtplib.SMTP, smtp: SmtpSettings, redact: _Redactor) -> None:
    if smtp.username is None:
        return
    user = smtp.username
    if smtp.uses_oauth2:
        token: Secret = smtp.oauth2_token()
        blob = f"user={user}\x01auth=Bearer {token.reveal()}\x01\x01"
        redact.add(token.reveal(), blob)

        def xoauth2(challenge: bytes | None = None) -> str:
            # On failure the server sends a JSON error as a 334 challenge and waits for an
            # empty line before its final 5xx (RFC 7628 style).
            return blob if challenge is None else ""

        client.ehlo_or_helo_if_needed()
        client.auth("XOAUTH2", xoauth2, initial_response_ok=True)
        return
    password = smtp.password()
    redact.add(password.reveal(), f"\0{user}\0{password.reveal()}")
    client.login(user, password.reveal())


def _close(client: smtplib.SMTP | None) -> None:
    if client is None:
        return
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def compose_message(row: st.Digest, settings: DigestSettings) -> EmailMessage:
    """The e-mail for a stored digest: multipart/alternative, text then HTML, UTF-8.

    Everything comes from the row, so every retry sends the same message with the same
    Message-ID (a receiving server or client can drop a duplicate).
    """
    msg = EmailMessage()
    msg["From"] = settings.from_addr
    msg["To"] = row.recipient
    msg["Subject"] = row.subject
    msg["Date"] = format_datetime(row.created_at.replace(tzinfo=UTC))
    msg["Message-ID"] = row.message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
    msg["X-Auto-Response-Suppress"] = "All"  # the same for Exchange
    msg["Content-Language"] = "en"
    msg.set_content(row.text_body, subtype="plain", charset="utf-8")
    msg.add_alternative(row.html_body, subtype="html", charset="utf-8")
    return msg


def send_pending(store: st.Store, config: Config, account: str = "default") -> list[SendResult]:
    """Send every pending digest of the account, oldest first, over one SMTP session.

    Never raises for SMTP, TLS, network or secret problems: each failed digest stays
    ``pending`` with ``attempts`` + 1 and a one-line ``last_error``, and comes back in the
    result (``summarize(results)`` is one line for the journal). Raises
    :class:`DigestError` when no digest is configured or another run holds the lock.
    """
    settings, smtp = _digest_settings(config, account)
    with _digest_lock(store, account):
        return _send_locked(store, settings, smtp, account)


def _send_locked(
    store: st.Store, settings: DigestSettings, smtp: SmtpSettings, account: str
) -> list[SendResult]:
    with store.session() as session:
        rows = st.pending_digests(session, account)
    if not rows:
        return []
    redact = _Redactor()
    try:
        client = _open(smtp, redact)
    except _SendFailure as failure:
        # No session, so none of them could go: each records the attempt.
        return [_record_failure(store, row, failure.line) for row in rows]
    try:
        return _send_rows(store, client, rows, settings, smtp, redact)
    finally:
        _close(client)


def _send_rows(
    store: st.Store,
    client: smtplib.SMTP,
    rows: Sequence[st.Digest],
    settings: DigestSettings,
    smtp: SmtpSettings,
    redact: _Redactor,
) -> list[SendResult]:
    results: list[SendResult] = []
    envelope_from = parseaddr(settings.from_addr)[1]
    for row in rows:
        message = compose_message(row, settings)
        envelope_to = parseaddr(row.recipient)[1]
        try:
            client.send_message(message, from_addr=envelope_from, to_addrs=[envelope_to])
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            line = _describe(exc, smtp, redact, "sending the digest")
            results.append(_record_failure(store, row, line))
            if _connection_lost(exc):
                break  # the rest stay pending, untouched, for the next call
            try:
                client.rset()
            except (smtplib.SMTPException, OSError):
                break
            continue
        # Exactly once, as far as SMTP allows: the server has answered 250 to the DATA,
        # so the mail is its responsibility now; mark the row sent at once, before QUIT
        # or the next digest, in one short UPDATE. If the process dies in the few
        # milliseconds between that 250 and this commit (or the connection drops after
        # the server accepted the data but before its 250 arrived), the row is still
        # pending and the digest is sent again next time: a duplicate, never a loss.
        # The Message-ID is stored and reused, so the duplicate is recognisable.
        results.append(_record_sent(store, row))
    return results


def _record_sent(store: st.Store, row: st.Digest) -> SendResult:
    assert row.id is not None
    try:
        with store.session() as session:
            session.execute(
                sa.update(st.Digest)
                .where(col(st.Digest.id) == row.id)
                .values(
                    status="sent",
                    sent_at=st.utcnow(),
                    attempts=col(st.Digest.attempts) + 1,
                    last_error=None,
                )
            )
    except st.StoreError as exc:
        log.error("digest %s was sent but could not be marked sent: %s", row.id, exc)
        return SendResult(
            row.id,
            row.recipient,
            row.subject,
            sent=True,
            attempts=row.attempts + 1,
            error=f"could not be marked sent ({exc}); it may be sent again",
        )
    return SendResult(row.id, row.recipient, row.subject, sent=True, attempts=row.attempts + 1)


def _record_failure(store: st.Store, row: st.Digest, line: str) -> SendResult:
    assert row.id is not None
    try:
        with store.session() as session:
            session.execute(
                sa.update(st.Digest)
                .where(col(st.Digest.id) == row.id, col(st.Digest.status) == "pending")
                .values(attempts=col(st.Digest.attempts) + 1, last_error=line)
            )
    except st.StoreError as exc:
        log.error("could not record the failure of digest %s: %s", row.id, exc)
    return SendResult(
        row.id, row.recipient, row.subject, sent=False, attempts=row.attempts + 1, error=line
    )


def run_digest(
    store: st.Store, config: Config, account: str = "default", now: datetime | None = None
) -> DigestRun:
    """The daily job: build the digest for the period since the last one, then send every
    pending digest (this one and any earlier one that failed)."""
    settings, smtp = _digest_settings(config, account)
    with _digest_lock(store, account):
        built = _build_locked(store, config, settings, account, _now(now))
        results = _send_locked(store, settings, smtp, account)
    return DigestRun(built=built, results=tuple(results))


# --------------------------------------------------------------------------- one run at a time


def _lock_path(store: st.Store, account: str) -> Path:
    db = st.sqlite_path(store.url)
    base = db.parent if db is not None else _default_state_dir()
    stem = db.name if db is not None else "store"
    safe_account = re.sub(r"[^A-Za-z0-9_.-]", "_", account)
    return base / f".{stem}.{safe_account}.digest-lock"


@contextmanager
def _digest_lock(store: st.Store, account: str) -> Iterator[None]:
    """One digest run per store and account: a manual ``digest --send`` next to the
    daemon's job must not send the same pending row twice or build two digests for one
    period. Refused (not waited for) when held."""
    path = _lock_path(store, account)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        # A store on a server, no writable state directory: go on without the lock.
        log.warning("digest lock %s unavailable (%s); not locking", path, exc.strerror)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DigestError(
                f"another digest run of this account is active (lock {path})"
            ) from None
        yield
    finally:
        os.close(fd)


def check_smtp(config: Config, env: Mapping[str, str] | None = None) -> str:
    """Connect, secure and log in to ``[smtp]`` without sending anything (for ``doctor``).
    Raises :class:`DigestError` with one clean line on failure."""
    del env  # secrets are resolved by the settings themselves
    _settings, smtp = _digest_settings(config)
    try:
        client = _open(smtp, _Redactor())
    except _SendFailure as exc:
        raise DigestError(exc.line) from None
    _close(client)
    how = {"implicit": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[smtp.tls]
    who = f" as {smtp.username}" if smtp.username else ""
    return f"{smtp.host}:{smtp.port} ({how}) accepted the login{who}"
