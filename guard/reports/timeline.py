"""The evidence timeline: the readable summary in a bundle (``timeline.html``,
``timeline.txt``) and its ``README.txt``.

Builds the timeline's views (:mod:`guard.reports.views`) from the store's rows and the
parsed originals, every mail text made safe by :mod:`guard.reports.text`, and renders
them with the Jinja2 templates. Times are shown in UTC and, when ``digest.timezone`` is
configured, in local time beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo

from guard import store as st
from guard.config import Config
from guard.mail import Message
from guard.mailbox.labels import CATEGORY_TITLES
from guard.reports import templating
from guard.reports.bundle import MANIFEST, MANIFEST_SUMS, README
from guard.reports.originals import Item
from guard.reports.selection import ThreadMatch
from guard.reports.text import display_address, printable_line, safe_block, safe_text
from guard.reports.views import (
    AttachmentView,
    FindingView,
    Timeline,
    TimelineMessage,
    TimelineThread,
    When,
)

__all__ = [
    "MAX_BODY_CHARS",
    "bundle_zone",
    "message_view",
    "readme_text",
    "render_timeline",
    "thread_view",
    "timeline_title",
    "when_view",
    "zone_label",
]

MAX_BODY_CHARS = 20_000
"""Characters of a message's text shown in the timeline; the .eml always has all of it."""


# --------------------------------------------------------------------------- views


def when_view(value: datetime | None, zone: tzinfo | None) -> When | None:
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC)
    utc = aware.strftime("%Y-%m-%d %H:%M:%S UTC")
    if zone is None:
        return When(utc)
    local = aware.astimezone(zone)
    return When(utc, f"{local.strftime('%Y-%m-%d %H:%M:%S')} {local.tzname() or ''}".strip())


def bundle_zone(config: Config) -> tzinfo | None:
    """The zone the timeline shows beside UTC: the digest's configured ``timezone``."""
    if config.digest is not None and config.digest.timezone is not None:
        return config.digest.zone()
    return None


def timeline_title(threads: Sequence[ThreadMatch]) -> str:
    if len(threads) == 1:
        return safe_text(threads[0].subject, 200) or "(no subject)"
    return f"{len(threads)} conversations"


def zone_label(zone: tzinfo | None, at: datetime) -> str:
    if zone is None:
        return "UTC"
    return str(getattr(zone, "key", None) or zone.tzname(at.replace(tzinfo=UTC)) or "UTC")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for unit, scale in (("KB", 1024), ("MB", 1024**2), ("GB", 1024**3)):
        if n < scale * 1024 or unit == "GB":
            return f"{n / scale:.1f} {unit} ({n:,} bytes)"
    return f"{n} bytes"  # pragma: no cover


def _finding_views(findings: Sequence[st.StoredFinding]) -> tuple[FindingView, ...]:
    return tuple(
        FindingView(
            title=CATEGORY_TITLES.get(f.category, safe_text(f.category, 40)),
            rule=printable_line(f.rule, 120),
            score=f"{f.score:+g}",
            where=printable_line(f.where, 40),
            evidence=safe_text(f.evidence, 600),
            explanation=safe_text(" ".join(f.explanation.split()), 1200),
        )
        for f in findings
    )


def message_view(item: Item, msg: Message | None, sha: str, zone: tzinfo | None) -> TimelineMessage:
    r = item.row
    if msg is not None:
        sender = display_address(msg.from_.name, msg.from_.addr) if msg.from_ else ""
        to = tuple(display_address(a.name, a.addr) for a in msg.to)
        cc = tuple(display_address(a.name, a.addr) for a in msg.cc)
        body, shortened = safe_block(msg.text or msg.html_text, MAX_BODY_CHARS)
        attachments = tuple(
            AttachmentView(
                name=safe_text(a.filename, 200) or "(no name)",
                type=safe_text(a.declared_type or a.sniffed_type, 100) or "unknown",
                size=_size(a.size),
            )
            for a in msg.attachments
        )
        defects = tuple(safe_text(d, 300) for d in msg.defects[:10])
    else:
        sender = display_address(r.sender_name, r.sender)
        to = tuple(safe_text(a, 160) for a in r.recipient_list)
        cc = ()
        body, shortened, attachments, defects = "", False, (), ()
    return TimelineMessage(
        number=item.number,
        file=item.file or "",
        status=item.status,
        note=safe_text(item.note, 600),
        thread=item.thread_number,
        date=when_view(r.date, zone),
        received=when_view(r.internal_date, zone),
        date_header=safe_text(item.date_header or "", 200),
        direction="sent by you" if r.direction == "out" else "received",
        folder=printable_line(r.folder),
        uid=r.uid,
        uidvalidity=r.uidvalidity,
        sender=sender or "(unknown sender)",
        to=to,
        cc=cc,
        subject=safe_text(r.subject if msg is None else msg.subject, 300) or "(no subject)",
        message_id=safe_text(r.message_id or "", 300),
        sha256=sha,
        size=_size(r.size if msg is None else msg.size),
        findings=_finding_views(item.findings),
        attachments=attachments,
        body=body,
        body_shortened=shortened,
        defects=defects,
    )


def thread_view(
    number: int, match: ThreadMatch, row: st.Thread | None, zone: tzinfo | None
) -> TimelineThread:
    cats = list(row.category_list) if row is not None else []
    return TimelineThread(
        number=number,
        account=printable_line(match.account),
        thread_id=printable_line(match.thread_id),
        subject=safe_text(match.subject, 300) or "(no subject)",
        risk=match.risk,
        categories=tuple(CATEGORY_TITLES.get(c, safe_text(c, 40)) for c in cats),
        first=when_view(match.first_date, zone),
        last=when_view(match.last_date, zone),
        messages=match.messages,
    )


# --------------------------------------------------------------------------- rendering


_environment = templating.environment
_wrap = templating.wrap


def _wrap_block(text: str, width: int = 76, indent: str = "") -> str:
    """Each line of a message body wrapped on its own, blank lines kept."""
    return "\n".join(
        _wrap(line, width, indent) if line else indent.rstrip() for line in text.split("\n")
    )


def render_timeline(timeline: Timeline) -> tuple[str, str]:
    """(timeline.html, timeline.txt) for a bundle."""
    env = _environment()
    env.filters["wrap_block"] = _wrap_block
    context = {
        "t": timeline,
        "manifest": MANIFEST,
        "manifest_sums": MANIFEST_SUMS,
        "readme": README,
    }
    html = env.get_template("timeline.html.j2").render(context)
    text = env.get_template("timeline.txt.j2").render(context)
    return html, text


def readme_text(timeline: Timeline) -> str:
    missing = ""
    if timeline.missing or timeline.partial:
        missing = (
            f"\nNOT COMPLETE: {timeline.missing} message(s) could not be included and "
            f"{timeline.partial} only in part; MANIFEST.json lists each of them with the "
            'reason (status "missing" or "partial"); "inbox-guard verify" counts a missing '
            "message as a failure unless given --allow-missing.\n"
        )
    total = len(timeline.messages)
    return f"""\
Evidence bundle made by inbox-guard {timeline.version} on {timeline.created.utc}.
It holds {total} message(s) of {len(timeline.threads)} conversation(s).
{missing}
WHAT IS IN IT

  messages/        Every message of the conversation, each exactly as the mail server
                   gave it to inbox-guard, byte for byte (.eml files: open them with any
                   mail program or a text editor). Numbered in date order.
  timeline.html    A readable summary: date (UTC), sender, recipients, subject, folder,
  timeline.txt     attachments, and what inbox-guard found. Made from the .eml files;
                   the .eml files are the originals.
  MANIFEST.json    For each message: its file, SHA-256 fingerprint and size, where it was
                   on the mail server (folder, UIDVALIDITY, UID and INTERNALDATE, the
                   time the server received it), its Message-ID and Date header. And the
                   SHA-256 fingerprint of every other file.
  MANIFEST.json.sha256
                   The SHA-256 fingerprint of MANIFEST.json itself (a file cannot
                   contain its own fingerprint), followed by those of all other files,
                   in the format the sha256sum tool reads.

HOW TO CHECK THAT NOTHING WAS CHANGED (with sha256sum alone)

  1. Unpack the zip file into an empty folder.
  2. Open a terminal in that folder and run:

         sha256sum -c MANIFEST.json.sha256

     (on macOS: shasum -a 256 -c MANIFEST.json.sha256)
  3. Every line must end in "OK". A file changed by even one byte shows "FAILED";
     a deleted file shows "No such file".
  4. The first line of MANIFEST.json.sha256 is the fingerprint of MANIFEST.json, and
     MANIFEST.json lists the fingerprint of every other file: that one value stands
     for the whole bundle. If the sender gave you this value separately (for example
     in the dispute form, or in the e-mail inbox-guard can send them when it makes
     the bundle), compare it too. Steps 1-3 only show that the files agree with each
     other: someone who rebuilt the whole bundle with other content and new
     fingerprints is caught only by comparing this value with one kept elsewhere.

  With inbox-guard installed,

         inbox-guard verify bundle.zip --expect <the fingerprint noted elsewhere>

  does all of this without unpacking: it prints the fingerprint of MANIFEST.json,
  compares it with the one given, checks every file, reports files added to the
  bundle and refuses entries that could not be unpacked safely.

  Each message's fingerprint must also be the one inbox-guard recorded when it first
  read the message ("recorded_sha256" in MANIFEST.json; "recorded_bytes", when
  present, says it covers only the first bytes inbox-guard read). That shows each
  message is what inbox-guard received; it cannot show that nobody changed the
  message on the mail server before inbox-guard first saw it. The mail provider can
  confirm a message from its folder, UIDVALIDITY and UID, or its Message-ID.
"""
