"""Reply drafts: a polite decline for off-platform payment and contact requests.

When ``[drafts] enabled`` is on and a client asks to pay or talk outside the platform,
the guard APPENDs a draft reply to the special-use ``\\Drafts`` folder: addressed to the
client, threaded (In-Reply-To / References), flagged ``\\Draft``, never sent. The wording
comes from templates in the package (or the user's own directory), in the language the
client wrote in when it is one of en, es, pt, fr, de, ru.

At most one draft per thread, ever: the store records each draft before it is written
(write-ahead), so a draft the user deleted is never created again, and a draft whose
APPEND was interrupted is looked for by its Message-ID before it is appended again.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import jinja2

from guard import store as st
from guard.imap import DRAFTS, Connection
from guard.message import Message
from guard.store import DraftRecord

log = logging.getLogger(__name__)

LANGUAGES = ("en", "es", "pt", "fr", "de", "ru")
TRIGGERS = frozenset({"off_platform_payment", "off_platform_contact"})
_PACKAGE_TEMPLATES = Path(__file__).parent / "templates" / "drafts"


@dataclass
class Candidate:
    """A client message that asked to leave the platform."""

    thread_id: str
    message: Message
    to_address: str  # the address the client wrote to (the freelancer's work address)


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
    name = "".join(ch for ch in display if ch.isprintable() and ch not in "<>\"'").strip()
    first = name.split()[0] if name.split() else ""
    return first[:40] if first and "@" not in first else ""


def render_body(language: str, client: str, platform: str, user_dir: Path | None) -> str:
    env = _environment(user_dir)
    template = env.get_template(f"decline.{language}.txt")
    return template.render(client=_first_name(client), platform=platform)


def _reply_subject(subject: str) -> str:
    subject = " ".join(subject.split()) or "(no subject)"
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"


def draft_message_id(account: str, thread_id: str, domain: str) -> str:
    digest = hashlib.sha256(f"{account}\0{thread_id}".encode()).hexdigest()[:24]
    return f"<guard-draft-{digest}@{domain or 'inbox-guard.invalid'}>"


def compose(
    candidate: Candidate, language: str, platform: str, user_dir: Path | None, message_id: str
) -> bytes:
    msg = candidate.message
    reply_to = msg.reply_to[0] if msg.reply_to else msg.from_
    if reply_to is None or "@" not in reply_to.addr:
        raise ValueError("the client's message has no usable From/Reply-To address")
    out = EmailMessage()
    out["From"] = candidate.to_address
    user, _, domain = reply_to.addr.rpartition("@")
    out["To"] = HeaderAddress(display_name=_first_name(reply_to.name), username=user, domain=domain)
    out["Subject"] = _reply_subject(msg.subject)
    out["Date"] = format_datetime(datetime.now(UTC))
    out["Message-ID"] = message_id
    if msg.message_id:
        out["In-Reply-To"] = msg.message_id
        refs = [*msg.references, msg.message_id]
        out["References"] = " ".join(dict.fromkeys(r for r in refs if r))
    out["X-Inbox-Guard"] = "draft; review before sending"
    out.set_content(render_body(language, reply_to.name, platform, user_dir))
    return bytes(out)


def _to_address(msg: Message, fallback: str) -> str:
    for addr in msg.to:
        if addr.addr:
            return addr.addr
    return fallback if "@" in fallback else ""


def candidate(
    thread_id: str, msg: Message, categories: tuple[str, ...], username: str
) -> Candidate | None:
    if not TRIGGERS.intersection(categories):
        return None
    to_address = _to_address(msg, username)
    if not to_address:
        return None
    return Candidate(thread_id, msg, to_address)


def write_drafts(
    conn: Connection,
    store: st.Store,
    account: str,
    candidates: list[Candidate],
    *,
    platform: str,
    user_dir: Path | None,
) -> int:
    """Append one draft per new thread; returns how many were appended."""
    if not candidates:
        return 0
    folder = conn.special_folder(DRAFTS)
    if folder is None:
        log.warning("drafts are enabled but the server has no \\Drafts folder; none written")
        return 0
    written = 0
    seen: set[str] = set()
    for cand in candidates:
        if cand.thread_id in seen:
            continue
        seen.add(cand.thread_id)
        domain = cand.to_address.rpartition("@")[2]
        message_id = draft_message_id(account, cand.thread_id, domain)
        with store.session() as session:
            record = session.get(DraftRecord, (account, cand.thread_id))
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
            record = session.get(DraftRecord, (account, cand.thread_id))
            if record is not None:
                record.done = True
                session.add(record)
        written += 1
        log.info("draft reply for thread %s put in %s (%s)", cand.thread_id, folder, language)
    return written


def _already_there(conn: Connection, folder: str, message_id: str) -> bool:
    return conn.find_by_message_id(folder, message_id)
