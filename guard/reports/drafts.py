"""Reply drafts for off-platform payment and contact requests, one per rung of the ladder.

When ``[drafts] enabled`` is on and a client asks to pay or talk outside the platform,
the guard APPENDs a draft reply to the special-use ``\\Drafts`` folder: addressed to the
client, threaded (In-Reply-To / References), flagged ``\\Draft``, never sent. Which
reply follows the thread's stage (``guard.reports.escalation``): rung 1 a polite decline
(``decline.<lang>.txt``), rung 2 when the client asks again after a decline a firm
restatement (``firm.<lang>.txt``), rung 3 when they insist a notice that the request was
reported to the platform (``reported.<lang>.txt``). The wording comes from templates in
the package (or the user's own directory, which may override any of them), in the
language the client wrote in when it is one of en, es, pt, fr, de, ru.

At most one draft per thread and rung, ever: the store records each draft before it is
written (write-ahead), so a draft the user deleted is never created again, and a draft
whose APPEND was interrupted is looked for by its Message-ID before it is appended again.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import jinja2
from sqlmodel import Session

from guard import store as st
from guard.mail import Message, msgid
from guard.mailbox import DRAFTS, Mailbox
from guard.store import DraftRecord

log = logging.getLogger(__name__)

LANGUAGES = ("en", "es", "pt", "fr", "de", "ru")
TRIGGERS = frozenset({"off_platform_payment", "off_platform_contact"})
_PACKAGE_TEMPLATES = Path(__file__).parent / "templates" / "drafts"

MAX_SUBJECT_CHARS = 300
MAX_REFERENCES = 20
_POLICY = email.policy.SMTP  # CRLF line ends, as IMAP APPEND wants them
# Header text loses these: controls (Cc), lone surrogates (Cs), unassigned (Cn), line and
# paragraph separators (Zl, Zp); and the bidirectional embeddings/overrides/isolates.
_DROP = frozenset({"Cc", "Cs", "Cn", "Zl", "Zp"})
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_DRAFT_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "x-inbox-guard",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
)


@dataclass
class Candidate:
    """A client message that asked to leave the platform."""

    thread_id: str
    message: Message
    from_address: str  # the mailbox's own address, from the configuration ("" if unknown)
    row: DraftSource | None = None  # where the message is recorded (to follow thread merges)
    rung: int = 1  # of the escalation ladder: which reply (1 decline, 2 firm, 3 reported)


@dataclass(frozen=True)
class DraftSource:
    folder: str
    uidvalidity: int
    uid: int


def detect_language(text: str) -> str:
    """The client's language among LANGUAGES (English when unsure or another one)."""
    sample = " ".join(text.split())[:2000]
    if len(sample) < 12:
        return "en"
    import py3langid

    lang, _score = py3langid.classify(sample)
    return lang if lang in LANGUAGES else "en"


def _environment(user_dir: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if user_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(user_dir)))
    loaders.append(jinja2.FileSystemLoader(str(_PACKAGE_TEMPLATES)))
    # Plain text mail: nothing to escape, but nothing from the mail is rendered except a
    # first name, which is cleaned below.
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def _first_name(display: str) -> str:
    """The first word of a display name, letters only (it is greeted in the body and
    shown in the To header): no quotes, brackets, ``=?`` or anything a mail program
    could read as structure."""
    words = display.split()
    if not words or "@" in words[0] or "=?" in words[0]:
        return ""
    first = "".join(ch for ch in words[0] if unicodedata.category(ch)[0] in "LMN" or ch in "-.'’")
    return first[:40].strip("-.'’")


TEMPLATES = {1: "decline", 2: "firm", 3: "reported"}


def render_body(
    language: str, client: str, platform: str, user_dir: Path | None, rung: int = 1
) -> str:
    env = _environment(user_dir)
    template = env.get_template(f"{TEMPLATES[rung]}.{language}.txt")
    return template.render(client=_first_name(client), platform=platform)


def _clean_text(text: str) -> str:
    """Header text with every control character made a space (C0/C1 controls, lone
    surrogates, unassigned code points, line and paragraph separators), bidirectional
    overrides removed, and runs of whitespace made one space."""
    kept = "".join(
        " " if unicodedata.category(ch) in _DROP else ch for ch in text if ch not in _BIDI
    )
    return " ".join(kept.split())


def _reply_subject(subject: str) -> str:
    subject = _clean_text(subject)[:MAX_SUBJECT_CHARS] or "(no subject)"
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"


def draft_message_id(account: str, thread_id: str, domain: str, rung: int = 1) -> str:
    key = f"{account}\0{thread_id}" + (f"\0{rung}" if rung != 1 else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    if not _DOMAIN.fullmatch(domain or ""):
        domain = "inbox-guard.invalid"
    return f"<guard-draft-{digest}@{domain}>"


def own_address(configured: str) -> str:
    """The mailbox's own address for a draft's From: the configured one (the IMAP user
    name, when it is an address), or "" when there is none. Never taken from the mail."""
    return configured.lower() if _plain_address(configured) else ""


def _plain_address(addr: str) -> tuple[str, str] | None:
    """(local part, domain) of a plain ASCII ``local@domain``, else None."""
    if not addr or len(addr) > 254 or not addr.isascii():
        return None
    local, at, domain = addr.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        return None
    return local, domain


def _subject_header(text: str) -> str:
    """``Subject:`` and its value, encoded by the email library's RFC 2047 encoder: plain
    when the text is printable ASCII with nothing that reads as an encoded word, else
    encoded words in UTF-8 (which also cover any literal ``=?...?=`` in the text)."""
    plain = text.isascii() and text.isprintable() and "=?" not in text
    encoded = Header(text, "us-ascii" if plain else "utf-8", header_name="Subject").encode(
        splitchars=" ", linesep="\r\n"
    )
    return f"Subject: {encoded}"


def _ids_header(name: str, ids: list[str]) -> str:
    """``name:`` with one validated id per folded line (each id is at most
    msgid.MAX_ID_CHARS, so every line stays far below the 998-octet limit)."""
    return f"{name}: " + "\r\n ".join(ids)


def compose(
    candidate: Candidate, language: str, platform: str, user_dir: Path | None, message_id: str
) -> bytes:
    """The draft's bytes. Every header comes from a validated part: the client's address
    (a plain ASCII address), the thread's ids (strict ``<local@domain>`` tokens; others
    are dropped), the subject as text with its control characters removed, re-encoded;
    From from the configuration. Raises ValueError when there is no usable address or
    when the result does not read back as exactly what was meant."""
    msg = candidate.message
    reply_to = msg.reply_to[0] if msg.reply_to else msg.from_
    to_parts = _plain_address(reply_to.addr) if reply_to is not None else None
    if reply_to is None or to_parts is None:
        raise ValueError("the client's message has no usable From/Reply-To address")
    from_parts = _plain_address(candidate.from_address)
    own = msgid.valid(message_id)
    if own is None:
        raise ValueError("the draft's own Message-ID is not valid")
    in_reply_to = msgid.parse_one(msg.message_id)
    references = msgid.parse_list(msg.references)
    if in_reply_to is not None:
        references = [r for r in references if r != in_reply_to] + [in_reply_to]
    if len(references) > MAX_REFERENCES:  # the first and the latest, as RFC 5322 suggests
        references = [references[0], *references[-(MAX_REFERENCES - 1) :]]
    subject = _reply_subject(msg.subject)
    name = _first_name(reply_to.name)
    body = render_body(language, reply_to.name, platform, user_dir, candidate.rung)

    out = EmailMessage(policy=_POLICY)
    if from_parts is not None:
        out["From"] = HeaderAddress(username=from_parts[0], domain=from_parts[1])
    out["To"] = HeaderAddress(display_name=name, username=to_parts[0], domain=to_parts[1])
    out["Date"] = format_datetime(datetime.now(UTC))
    out["Message-ID"] = own
    out["X-Inbox-Guard"] = "draft; review before sending"
    out.set_content(body)
    generated = out.as_bytes()
    head, sep, rest = generated.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("the draft could not be put together")
    # Subject and the thread's ids are written here, not by the library's header
    # folding: its treatment of text that looks like an encoded word changed between
    # Python versions, and these values are the ones a sender controls.
    extra = [_subject_header(subject)]
    if in_reply_to is not None:
        extra.append(_ids_header("In-Reply-To", [in_reply_to]))
    if references:
        extra.append(_ids_header("References", references))
    raw = head + b"\r\n" + "\r\n".join(extra).encode("ascii") + sep + rest
    expected = {
        "from": f"{from_parts[0]}@{from_parts[1]}" if from_parts is not None else None,
        "to": f"{to_parts[0]}@{to_parts[1]}",
        "to_name": name,
        "subject": subject,
        "in-reply-to": in_reply_to,
        "references": " ".join(references) or None,
        "message-id": own,
        "body": body,
    }
    problem = _reads_back_as(raw, expected)
    if problem:
        raise ValueError(f"the draft did not read back as written ({problem})")
    return raw


def _reads_back_as(raw: bytes, expected: dict[str, str | None]) -> str:
    """ "" when ``raw`` parses (the way a mail program would) into exactly the headers and
    the single text/plain body meant, else what differs (a header name, no mail text)."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    names = [k.lower() for k in parsed]
    allowed = set(_DRAFT_HEADERS)
    if expected["from"] is None:
        allowed.discard("from")
    if expected["in-reply-to"] is None:
        allowed.discard("in-reply-to")
    if expected["references"] is None:
        allowed.discard("references")
    if sorted(names) != sorted(allowed):
        return "unexpected or repeated headers"
    if parsed.defects:
        return "malformed"
    if parsed.get_content_type() != "text/plain" or parsed.is_multipart():
        return "content type"
    if str(parsed["Subject"]) != expected["subject"]:
        return "Subject"
    for key in ("in-reply-to", "references", "message-id"):
        value = parsed[key]
        if expected[key] is not None and " ".join(str(value).split()) != expected[key]:
            return key
    to = parsed["To"].addresses
    if (
        len(to) != 1
        or to[0].addr_spec != expected["to"]
        or to[0].display_name != expected["to_name"]
    ):
        return "To"
    if expected["from"] is not None:
        sender = parsed["From"].addresses
        if len(sender) != 1 or sender[0].addr_spec != expected["from"]:
            return "From"
    content = parsed.get_content().replace("\r\n", "\n")
    if content.rstrip("\n") != (expected["body"] or "").replace("\r\n", "\n").rstrip("\n"):
        return "body"
    return ""


def candidate(
    thread_id: str,
    msg: Message,
    categories: tuple[str, ...],
    address: str,
    row: st.StoredMessage | None = None,
) -> Candidate | None:
    """A draft candidate when ``categories`` ask for a decline; ``address`` is the
    mailbox's configured address (a draft without one has no From, and the mail program
    fills it in on sending); ``row`` is where the message is recorded."""
    if not TRIGGERS.intersection(categories):
        return None
    source = DraftSource(row.folder, row.uidvalidity, row.uid) if row is not None else None
    return Candidate(thread_id, msg, own_address(address), source)


def current_thread(session: Session, account: str, cand: Candidate) -> str:
    """The candidate's thread now (threads merge after a message is recorded), read from
    the message's own row: never from its Message-ID, which another sender may reuse."""
    if cand.row is None:
        return cand.thread_id
    row = st.message_at(session, account, cand.row.folder, cand.row.uidvalidity, cand.row.uid)
    return row.thread_id if row is not None and row.thread_id else cand.thread_id


def write_drafts(
    conn: Mailbox,
    store: st.Store,
    account: str,
    candidates: list[Candidate],
    *,
    platform: str,
    user_dir: Path | None,
) -> int:
    """Append one draft per thread and rung not drafted yet; returns how many were
    appended."""
    if not candidates:
        return 0
    folder = conn.special_folder(DRAFTS)
    if folder is None:
        log.warning("drafts are enabled but the server has no \\Drafts folder; none written")
        return 0
    written = 0
    seen: set[tuple[str, int]] = set()
    for cand in candidates:
        if (cand.thread_id, cand.rung) in seen:
            continue
        seen.add((cand.thread_id, cand.rung))
        domain = cand.from_address.rpartition("@")[2]
        message_id = draft_message_id(account, cand.thread_id, domain, cand.rung)
        with store.session() as session:
            record = session.get(DraftRecord, (account, cand.thread_id, cand.rung))
            if record is not None and record.done:
                continue  # written once; if the user deleted it, that was their choice
            if record is not None and _already_there(conn, folder, record.message_id):
                record.done = True
                session.add(record)
                continue
            language = detect_language(cand.message.body)
            if record is None:
                session.add(
                    DraftRecord(
                        account=account,
                        thread_id=cand.thread_id,
                        rung=cand.rung,
                        message_id=message_id,
                        folder=folder,
                        language=language,
                    )
                )
        try:
            raw = compose(cand, language, platform, user_dir, message_id)
        except (ValueError, jinja2.TemplateError) as exc:
            log.error("draft for thread %s not written: %s", cand.thread_id, exc)
            continue
        conn.append(folder, raw, ("\\Draft", "\\Seen"))
        with store.session() as session:
            record = session.get(DraftRecord, (account, cand.thread_id, cand.rung))
            if record is not None:
                record.done = True
                session.add(record)
        written += 1
        log.info(
            "draft reply (rung %d) for thread %s put in %s (%s)",
            cand.rung,
            cand.thread_id,
            folder,
            language,
        )
    return written


def _already_there(conn: Mailbox, folder: str, message_id: str) -> bool:
    return conn.find_by_message_id(folder, message_id)
