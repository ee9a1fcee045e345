"""The SMTP client the guard sends its own mail with (the digest, an evidence bundle's hash).

Connecting as ``[smtp]`` says (implicit TLS, STARTTLS, or none, which then is refused
when the server offers no STARTTLS), logging in with a password or an OAuth2 token, and
turning every SMTP, TLS or network failure into one clean line (:func:`describe`) that
never repeats a secret: every spelling of the login secrets is removed from server text
(:class:`Redactor`), and replies to AUTH are reduced to their codes.
"""

from __future__ import annotations

import base64
import re
import secrets
import smtplib
import socket
import ssl
from datetime import datetime
from email.utils import parseaddr

from guard.config import ConfigError, Secret, SmtpSettings
from guard.errors import GuardError
from guard.reports.text import one_line

__all__ = [
    "Redactor",
    "SendFailure",
    "close_session",
    "connection_lost",
    "describe",
    "new_message_id",
    "open_session",
]


class SendFailure(GuardError):
    """A clean one-line reason; ``connection_lost``: the rest cannot go on this session."""

    def __init__(self, line: str, *, connection_lost: bool) -> None:
        super().__init__(line)
        self.line = line
        self.connection_lost = connection_lost


class Redactor:
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


def _server_text(resp: bytes | str, redact: Redactor) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return one_line(redact(text), 200)


def _enhanced(resp: bytes | str) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    match = re.match(r"\s*([245]\.\d{1,3}\.\d{1,3})\b", text)
    return f" {match.group(1)}" if match else ""


def describe(exc: BaseException, smtp: SmtpSettings, redact: Redactor, doing: str) -> str:
    """One clean line for an SMTP or network failure. Server replies to AUTH are never
    repeated (a server may echo the credentials it was given), only their codes."""
    where = f"{smtp.host}:{smtp.port}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return (
            f"SMTP login as {one_line(smtp.username, 100)} refused by {where} "
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
        return f"{where}: {one_line(redact(str(exc)), 200)} ({doing})"
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
        return f"SMTP error with {where} while {doing}: {one_line(redact(str(exc)), 200)}"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer within {smtp.timeout:g} s while {doing}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {smtp.host}: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        return f"cannot reach {where} while {doing}: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, UnicodeError):  # its text would quote a character of the password
        return f"cannot send non-ASCII text to {where} while {doing} (user name or password?)"
    return f"{type(exc).__name__} while {doing}"


def connection_lost(exc: BaseException) -> bool:
    # SMTPException derives from OSError: a plain OSError is the socket itself failing.
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)


def open_session(smtp: SmtpSettings, redact: Redactor) -> smtplib.SMTP:
    """Connect, secure and log in as ``[smtp]`` says, or raise a :class:`SendFailure`."""
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
                    raise SendFailure(
                        f"{smtp.host}:{smtp.port} does not offer STARTTLS; not sending in clear "
                        '(use tls = "implicit" if the port expects TLS at once)',
                        connection_lost=True,
                    )
                client.starttls(context=context)
                client.ehlo()
        doing = "logging in"
        _login(client, smtp, redact)
        return client
    except SendFailure:
        close_session(client)
        raise
    except ConfigError as exc:  # the secret could not be fetched; the text names no secret
        close_session(client)
        raise SendFailure(str(exc), connection_lost=True) from None
    except (smtplib.SMTPException, OSError, UnicodeError) as exc:
        close_session(client)
        raise SendFailure(describe(exc, smtp, redact, doing), connection_lost=True) from None


def _login(client: smtplib.SMTP, smtp: SmtpSettings, redact: Redactor) -> None:
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


def close_session(client: smtplib.SMTP | None) -> None:
    if client is None:
        return
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def new_message_id(from_addr: str, now: datetime) -> str:
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
