"""What the guard mails: the daily digest, and an evidence bundle's fingerprint.

Sending a digest is two-phase: :func:`guard.reports.digest.build_digest` first stores it
as a ``digest`` row (both bodies, a fixed Message-ID) and commits it; then every pending
row is sent over SMTP (:mod:`guard.reports.smtp`) and marked ``sent`` as soon as the
server has accepted it. A failure leaves the row ``pending`` with a one-line
``last_error`` and is retried by the next :func:`send_pending`; nothing is lost, and a
resend can only happen in the short window explained in :func:`_send_rows`.
:func:`mail_manifest_hash` mails an evidence bundle's MANIFEST.json SHA-256 over the same
SMTP code, so that a dated copy of it exists outside the bundle.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

import sqlalchemy as sa
from sqlmodel import col

from guard import store as st
from guard.config import Config, DigestSettings, SmtpSettings
from guard.reports.digest import (
    DigestError,
    digest_lock,
    digest_settings,
    store_digest,
    utc_now,
)
from guard.reports.export import ExportError, ExportResult
from guard.reports.selection import ThreadMatch
from guard.reports.smtp import (
    Redactor,
    SendFailure,
    close_session,
    connection_lost,
    describe,
    new_message_id,
    open_session,
)
from guard.reports.text import printable_line

__all__ = [
    "DigestRun",
    "SendResult",
    "check_smtp",
    "compose_message",
    "mail_manifest_hash",
    "run_digest",
    "send_pending",
    "summarize",
]

log = logging.getLogger(__name__)


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
    settings, smtp = digest_settings(config, account)
    with digest_lock(store, account):
        return _send_locked(store, settings, smtp, account)


def _send_locked(
    store: st.Store, settings: DigestSettings, smtp: SmtpSettings, account: str
) -> list[SendResult]:
    with store.session() as session:
        rows = st.pending_digests(session, account)
    if not rows:
        return []
    redact = Redactor()
    try:
        client = open_session(smtp, redact)
    except SendFailure as failure:
        # No session, so none of them could go: each records the attempt.
        return [_record_failure(store, row, failure.line) for row in rows]
    try:
        return _send_rows(store, client, rows, settings, smtp, redact)
    finally:
        close_session(client)


def _send_rows(
    store: st.Store,
    client: smtplib.SMTP,
    rows: Sequence[st.Digest],
    settings: DigestSettings,
    smtp: SmtpSettings,
    redact: Redactor,
) -> list[SendResult]:
    results: list[SendResult] = []
    envelope_from = parseaddr(settings.from_addr)[1]
    for row in rows:
        message = compose_message(row, settings)
        envelope_to = parseaddr(row.recipient)[1]
        try:
            client.send_message(message, from_addr=envelope_from, to_addrs=[envelope_to])
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            line = describe(exc, smtp, redact, "sending the digest")
            results.append(_record_failure(store, row, line))
            if connection_lost(exc):
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
    settings, smtp = digest_settings(config, account)
    with digest_lock(store, account):
        built = store_digest(store, config, settings, account, utc_now(now))
        results = _send_locked(store, settings, smtp, account)
    return DigestRun(built=built, results=tuple(results))


def check_smtp(config: Config, env: Mapping[str, str] | None = None) -> str:
    """Connect, secure and log in to ``[smtp]`` without sending anything (for ``doctor``).
    Raises :class:`DigestError` with one clean line on failure."""
    del env  # secrets are resolved by the settings themselves
    _settings, smtp = digest_settings(config)
    try:
        client = open_session(smtp, Redactor())
    except SendFailure as exc:
        raise DigestError(exc.line) from None
    close_session(client)
    how = {"implicit": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[smtp.tls]
    who = f" as {smtp.username}" if smtp.username else ""
    return f"{smtp.host}:{smtp.port} ({how}) accepted the login{who}"


# --------------------------------------------------------------------------- mailing the hash


def mail_manifest_hash(
    config: Config,
    result: ExportResult,
    threads: Sequence[ThreadMatch],
    now: datetime | None = None,
) -> list[str]:
    """Mail the bundle's MANIFEST.json SHA-256 to the digest address of each account of
    the bundle, over the digest's own SMTP connection code, so that a dated copy of it
    exists outside the bundle. Returns the recipients; raises ExportError (one line, no
    secret) when ``[digest]``/``[smtp]`` are missing or the mail could not be sent."""
    sent_at = (st.as_utc_naive(now) or st.utcnow()).replace(microsecond=0)
    try:
        settings = [digest_settings(config, a) for a in sorted({t.account for t in threads})]
    except DigestError as exc:
        raise ExportError(str(exc)) from None
    smtp = settings[0][1]
    recipients: dict[str, DigestSettings] = {}  # envelope address -> that account's digest settings
    for account_settings, _smtp in settings:
        recipients.setdefault(parseaddr(account_settings.to)[1], account_settings)
    redact = Redactor()
    try:
        client = open_session(smtp, redact)
    except SendFailure as failure:
        raise ExportError(failure.line) from None
    try:
        for address, account_settings in recipients.items():
            message = _hash_message(result, threads, account_settings, sent_at)
            try:
                client.send_message(
                    message,
                    from_addr=parseaddr(account_settings.from_addr)[1],
                    to_addrs=[address],
                )
            except (smtplib.SMTPException, OSError, UnicodeError) as exc:
                raise ExportError(
                    describe(exc, smtp, redact, "sending the bundle's hash")
                ) from None
    finally:
        close_session(client)
    return [str(s.to) for s in recipients.values()]


def _hash_message(
    result: ExportResult, threads: Sequence[ThreadMatch], settings: DigestSettings, when: datetime
) -> EmailMessage:
    name = printable_line(result.path.name, 120)
    conversations = "\n".join(
        f"    {printable_line(t.thread_id, 80)} (account {printable_line(t.account, 60)}, "
        f"{t.messages} message(s))"
        for t in threads
    )
    total = len(result.messages)
    body = f"""\
inbox-guard wrote an evidence bundle on {when:%Y-%m-%d %H:%M:%S} UTC.

  File:                   {name}
  MANIFEST.json SHA-256:  {result.manifest_sha256}
  Messages:               {result.included} of {total} in the bundle
  Conversations:
{conversations}

Keep this e-mail: it is a dated copy of the bundle's fingerprint, kept outside the
bundle. Anyone who rebuilt the bundle with other content would have to change this
fingerprint too. To check the bundle later:

    inbox-guard verify {name} --expect {result.manifest_sha256}

or unpack it and compare the first value in MANIFEST.json.sha256 with the one above.
"""
    msg = EmailMessage()
    msg["From"] = settings.from_addr
    msg["To"] = settings.to
    msg["Subject"] = f"inbox-guard evidence bundle: MANIFEST.json SHA-256 {result.manifest_sha256}"
    msg["Date"] = format_datetime(when.replace(tzinfo=UTC))
    msg["Message-ID"] = new_message_id(settings.from_addr, when)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(body, subtype="plain", charset="utf-8")
    return msg
