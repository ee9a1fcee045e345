"""A deterministic, realistic freelancer's mailbox for the mailbox benchmarks.

``mailbox(count, seed)`` returns ``count`` messages as ``(folder, raw bytes)`` in the order
they arrived, about 88 % in INBOX and 12 % in Sent (the freelancer's own replies), built
from templates so that 20,000 take well under a second:

- conversations with clients and agencies, 1-6 messages each, replies carrying
  In-Reply-To/References and a quoted tail; some plain text (a few quoted-printable UTF-8),
  some multipart/alternative with HTML;
- newsletters (HTML with many links, List-Id, List-Unsubscribe) and notifications
  (plain text with links, List-Id);
- risky mail, about 15 %: off-platform payment and contact requests (also as the last
  message of an ordinary conversation), phishing with a link whose text and target
  differ, a dangerous attachment.

Every message has the headers a real mailbox shows (Received, DKIM-Signature,
Authentication-Results, Message-ID); most are 2-6 KB. ``corpus_ham(directory)`` lets the
ordinary mail be replaced by real messages (``--corpus``), each copy given a Message-ID
of its own so that repeats do not merge into one thread.
"""

from __future__ import annotations

import base64
import quopri
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ME = ("Sam Novak", "sam@novak-dev.example")
START = datetime(2024, 1, 8, 8, 0, tzinfo=UTC)

_VOCAB = _words(
    "project deadline milestone review design database api endpoint deploy staging "
    "feedback invoice schedule meeting draft version release testing client update "
    "feature request bug report sprint backlog estimate scope budget hours weekly "
    "component layout mobile desktop browser server cache query migration report "
    "dashboard chart export import user account settings profile notification email "
    "logo brand colours typography wireframe prototype mockup handoff assets copy "
    "landing page checkout cart payment gateway integration webhook token login signup "
    "onboarding analytics tracking performance accessibility contrast spacing grid "
    "font icon illustration photo banner header footer navigation menu search filter "
    "tomorrow today monday thursday friday morning afternoon evening week month quarter "
    "please thanks great good nice quick small large first second final next last "
    "check send share update fix change move add remove test review approve merge"
)
_OPENERS = (
    "I had a look at",
    "Could you send me",
    "We still need",
    "Thanks for the",
    "I pushed the",
    "Let me know about",
    "The client liked the",
    "Quick question about the",
    "As discussed, the",
    "I will finish the",
)
_FIRST = _words(
    "Anna Ben Carla Dmitri Elena Farid Greta Hiro Ines Jonas Kavya Liam Mara Nils Olga "
    "Pedro Quinn Rosa Sven Tara Umar Vera Wen Xenia Yusuf Zoe Ada Bruno Chloe Diego"
)
_LAST = _words(
    "Keller Moreau Rossi Novak Silva Tanaka Berg Costa Dubois Fischer Garcia Hansen "
    "Ivanova Jensen Kowalski Lopez Meyer Nakamura Olsen Petrov"
)
_ORGS = _words(
    "brightpixel studio-nord acme-apps larkdesign hollow-oak quanta-labs bluefin-media "
    "tidewater kitebox oakridge-digital ferro-tech pinecone nimbus-works redbrick"
)
_SUBJECTS = (
    "dashboard milestone {n}",
    "logo revisions, round {n}",
    "landing page copy",
    "API integration questions",
    "invoice #{n} for March",
    "sprint {n} planning",
    "mobile layout feedback",
    "checkout bug on staging",
    "new feature estimate",
    "design handoff v{n}",
    "weekly sync notes",
    "contract extension",
    "analytics tracking plan",
    "accessibility review",
)
_ACCENTED = (
    "Grüße aus München, wir schätzen Ihre Arbeit sehr.",
    "Merci pour la maquette, c'est très réussi à première vue.",
    "¿Podrías revisar la versión móvil antes del jueves?",
    "Obrigado pela atualização, ficou ótimo no celular.",
)
_PAYMENT = (
    "Honestly the platform fees are too high for both of us. Can you send me your PayPal "
    "so I pay you directly and we avoid the Upwork fees? A bank transfer works for me too, "
    "and then I will close the contract here."
)
_CONTACT = (
    "Before we go on, please add me on WhatsApp +1 555 0100 or Telegram @hiring_desk so we "
    "can talk there instead of this platform. Also send me your personal email and phone "
    "number."
)


def _paragraph_pool(rng: random.Random, size: int = 400) -> tuple[str, ...]:
    out = []
    for _ in range(size):
        sentences = []
        for _s in range(rng.randint(2, 5)):
            words = " ".join(rng.choice(_VOCAB) for _w in range(rng.randint(6, 16)))
            sentences.append(f"{rng.choice(_OPENERS)} {words}.")
        out.append(_wrap(" ".join(sentences)))
    return tuple(out)


def _wrap(text: str, width: int = 76) -> str:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return "\n".join(lines)


@dataclass
class _Person:
    name: str
    addr: str


@dataclass
class _Builder:
    rng: random.Random
    pool: tuple[str, ...]
    people: list[_Person]
    when: datetime = START
    serial: int = 0
    out: list[tuple[str, bytes]] = field(default_factory=list)

    # -- pieces ---------------------------------------------------------------------

    def tick(self) -> datetime:
        # ~20,000 messages over about two years: a few minutes to a few hours apart
        self.when += timedelta(minutes=self.rng.randint(3, 95))
        return self.when

    def msgid(self, domain: str) -> str:
        self.serial += 1
        return f"<{self.serial:06d}.{self.rng.getrandbits(40):010x}@{domain}>"

    def body(self, low: int, high: int) -> str:
        target = self.rng.randint(low, high)
        parts: list[str] = []
        size = 0
        while size < target:
            para = self.rng.choice(self.pool)
            parts.append(para)
            size += len(para) + 2
        return "\n\n".join(parts)

    def headers(
        self,
        sender: _Person,
        to: _Person,
        subject: str,
        msgid: str,
        when: datetime,
        extra: list[str],
        auth: str = "pass",
    ) -> list[str]:
        domain = sender.addr.rpartition("@")[2]
        hop = self.rng.randint(10, 250)
        sig = base64.b64encode(self.rng.randbytes(128)).decode()
        stamp = format_datetime(when)
        return [
            f"Return-Path: <{sender.addr}>",
            f"Delivered-To: {to.addr}",
            f"Received: from mx{hop % 7}.novak-dev.example (mx{hop % 7}.novak-dev.example "
            f"[10.0.{hop}.{hop % 50}])\n\tby imap.novak-dev.example with LMTP id "
            f"{hop:x}{self.serial:x}"
            f"\n\tfor <{to.addr}>; {stamp}",
            f"Received: from mail.{domain} (mail.{domain} [192.0.2.{hop}])\n\tby "
            f"mx{hop % 7}.novak-dev.example (Postfix) with ESMTPS id {self.serial:08X}\n\t"
            f"for <{to.addr}>; {stamp}",
            f"Authentication-Results: mx.novak-dev.example; spf={auth} "
            f"smtp.mailfrom={domain}; dkim={auth if auth == 'pass' else 'none'} "
            f"header.d={domain}; dmarc={auth}",
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s1;\n\t"
            f"h=from:to:subject:date:message-id; bh={sig[:44]};\n\tb={sig[44:]}",
            f"From: {sender.name} <{sender.addr}>",
            f"To: {to.name} <{to.addr}>",
            f"Subject: {subject}",
            f"Date: {stamp}",
            f"Message-ID: {msgid}",
            "MIME-Version: 1.0",
            *extra,
        ]

    def emit(self, folder: str, head: list[str], body: str) -> None:
        text = "\n".join(head) + "\n\n" + body + "\n"
        self.out.append((folder, text.replace("\n", "\r\n").encode("utf-8")))

    # -- message kinds --------------------------------------------------------------

    def conversation(self, html: bool, risky_end: str | None) -> None:
        client = self.rng.choice(self.people)
        me = _Person(*ME)
        length = self.rng.choices((1, 2, 3, 4, 5, 6), (36, 24, 16, 11, 8, 5))[0]
        subject = self.rng.choice(_SUBJECTS).format(n=self.rng.randint(2, 99))
        refs: list[str] = []
        previous = ""
        for k in range(length):
            # the freelancer answers some turns; clients and their colleagues write more
            outgoing = k > 0 and self.rng.random() < 0.22
            sender, to = (me, client) if outgoing else (client, me)
            domain = sender.addr.rpartition("@")[2]
            msgid = self.msgid(domain)
            when = self.tick()
            text = self.body(700, 2600)
            if risky_end and k == length - 1 and not outgoing:
                text += "\n\n" + _wrap(_PAYMENT if risky_end == "payment" else _CONTACT)
            utf8 = self.rng.random() < 0.12
            if utf8:
                text = _wrap(self.rng.choice(_ACCENTED)) + "\n\n" + text
            greeting = f"Hi {to.name.split()[0]},\n\n"
            sign = f"\n\nBest,\n{sender.name.split()[0]}"
            quoted = ""
            if previous:
                quoted = f"\n\nOn {format_datetime(when - timedelta(hours=2))}, wrote:\n" + (
                    "\n".join("> " + line for line in previous.splitlines()[:12])
                )
            plain = greeting + text + sign + quoted
            extra: list[str] = []
            if refs:
                extra.append(f"In-Reply-To: {refs[-1]}")
                extra.append("References: " + "\n ".join(refs[-10:]))
            subj = ("Re: " if k else "") + subject
            head = self.headers(sender, to, subj, msgid, when, extra)
            folder = "Sent" if outgoing else "INBOX"
            if html and not outgoing:
                boundary = f"=_alt_{self.serial:06d}"
                paras = "".join(f"<p>{p}</p>\n" for p in (greeting + text + sign).split("\n\n"))
                page = (
                    '<html><head><meta charset="utf-8"><style>p{margin:0 0 1em}'
                    '</style></head><body><div style="font-family:Arial,sans-serif">\n'
                    f"{paras}</div></body></html>"
                )
                head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
                body = (
                    f"--{boundary}\n{self.part('plain', plain, utf8)}\n"
                    f"--{boundary}\n{self.part('html', page, utf8)}\n--{boundary}--"
                )
                self.emit(folder, head, body)
            else:
                self.emit(folder, head, self.single("plain", plain, utf8, head))
            refs.append(msgid)
            previous = text

    def part(self, subtype: str, text: str, utf8: bool) -> str:
        if utf8:
            encoded = quopri.encodestring(text.encode("utf-8")).decode("ascii")
            return (
                f"Content-Type: text/{subtype}; charset=utf-8\n"
                f"Content-Transfer-Encoding: quoted-printable\n\n{encoded}"
            )
        return (
            f"Content-Type: text/{subtype}; charset=us-ascii\n"
            f"Content-Transfer-Encoding: 7bit\n\n{text}"
        )

    def single(self, subtype: str, text: str, utf8: bool, head: list[str]) -> str:
        part = self.part(subtype, text, utf8)
        part_head, _, body = part.partition("\n\n")
        head.extend(part_head.split("\n"))
        return body

    def newsletter(self) -> None:
        org = self.rng.choice(("pyweekly", "designdigest", "frontendfocus", "saasnews"))
        sender = _Person(f"{org.title()}", f"news@{org}.example")
        me = _Person(*ME)
        when = self.tick()
        issue = self.rng.randint(100, 900)
        items = []
        for k in range(self.rng.randint(5, 9)):
            title = " ".join(self.rng.choice(_VOCAB) for _ in range(5)).title()
            items.append(
                f'<tr><td><h3><a href="https://{org}.example/r/{issue}-{k}?utm_source=email">'
                f"{title}</a></h3><p>{self.rng.choice(self.pool)[:300]}</p></td></tr>"
            )
        boundary = f"=_news_{self.serial:06d}"
        extra = [
            f"List-Id: {sender.name} <weekly.{org}.example>",
            f"List-Unsubscribe: <https://{org}.example/unsubscribe?u={self.serial}>",
            "Precedence: bulk",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
        head = self.headers(
            sender, me, f"{sender.name} #{issue}", self.msgid(f"{org}.example"), when, extra
        )
        plain = f"Read issue {issue} online: https://{org}.example/issues/{issue}\n"
        page = (
            '<html><body><table width="600" cellpadding="0">'
            + "".join(items)
            + f'</table><p><a href="https://{org}.example/unsubscribe">Unsubscribe</a></p>'
            "</body></html>"
        )
        body = (
            f"--{boundary}\n{self.part('plain', plain, False)}\n"
            f"--{boundary}\n{self.part('html', page, False)}\n--{boundary}--"
        )
        self.emit("INBOX", head, body)

    def notification(self) -> None:
        repo = self.rng.choice(("acme/app", "acme/site", "brightpixel/cms"))
        sender = _Person("GitHub", "notifications@github.com")
        me = _Person(*ME)
        when = self.tick()
        run = self.rng.randint(10_000, 99_999)
        links = "\n".join(
            f"  https://github.com/{repo}/actions/runs/{run}/job/{k}" for k in range(6)
        )
        text = (
            f"Run failed for main ({run:x}).\n\nJobs:\n{links}\n\n{self.body(800, 2200)}\n\n"
            "You are receiving this because you are subscribed to this thread.\n"
            f"Manage notifications: https://github.com/settings/notifications?n={run}\n"
        )
        extra = [f"List-Id: {repo} <{repo.replace('/', '.')}.github.com>"]
        head = self.headers(
            sender, me, f"[{repo}] Run failed: CI - main", self.msgid("github.com"), when, extra
        )
        self.emit("INBOX", head, self.single("plain", text, False, head))

    def phishing(self) -> None:
        sender = _Person("Upwork Support", "support@upw0rk-verify.example")
        me = _Person(*ME)
        when = self.tick()
        boundary = f"=_ph_{self.serial:06d}"
        extra = [
            "Reply-To: billing@other-domain.example",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
        head = self.headers(
            sender,
            me,
            "Action required: verify your account",
            self.msgid("upw0rk-verify.example"),
            when,
            extra,
            auth="fail",
        )
        plain = "Your account is on hold. Verify it now: https://upw0rk-verify.example/x\n"
        page = (
            "<html><body><p>Dear freelancer,</p><p>Your account is suspended until you verify "
            f'your identity: <a href="https://upw0rk-verify.example/login?id={self.serial}">'
            "https://www.upwork.com/account/verify</a></p>"
            f"<p>{self.body(800, 2000)}</p></body></html>"
        )
        body = (
            f"--{boundary}\n{self.part('plain', plain, False)}\n"
            f"--{boundary}\n{self.part('html', page, False)}\n--{boundary}--"
        )
        self.emit("INBOX", head, body)

    def attachment(self) -> None:
        sender = _Person("Accounts", "accounts@invoices-mail.example")
        me = _Person(*ME)
        when = self.tick()
        boundary = f"=_att_{self.serial:06d}"
        payload = base64.encodebytes(b"MZ\x90\x00" + self.rng.randbytes(1500)).decode()
        head = self.headers(
            sender,
            me,
            f"Invoice #{self.rng.randint(1000, 9999)} overdue",
            self.msgid("invoices-mail.example"),
            when,
            [f'Content-Type: multipart/mixed; boundary="{boundary}"'],
        )
        text = f"Please see the attached invoice.\n\n{self.body(600, 1500)}\n"
        body = (
            f"--{boundary}\n{self.part('plain', text, False)}\n--{boundary}\n"
            'Content-Type: application/octet-stream; name="invoice_4471.pdf.exe"\n'
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="invoice_4471.pdf.exe"\n\n'
            f"{payload}--{boundary}--"
        )
        self.emit("INBOX", head, body)


def _people(rng: random.Random, count: int = 300) -> list[_Person]:
    out = []
    for _ in range(count):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        org = rng.choice(_ORGS)
        out.append(_Person(f"{first} {last}", f"{first.lower()}.{last.lower()}@{org}.example"))
    return out


def mailbox(count: int, seed: int = 20240108) -> list[tuple[str, bytes]]:
    """``count`` messages as ``(folder, raw)``, oldest first; the same for the same seed."""
    rng = random.Random(seed)
    builder = _Builder(rng, _paragraph_pool(rng), _people(rng))
    kinds: tuple[tuple[Callable[[], None], int], ...] = (
        (lambda: builder.conversation(False, None), 42),
        (lambda: builder.conversation(True, None), 17),
        (builder.newsletter, 11),
        (builder.notification, 12),
        (lambda: builder.conversation(False, "payment"), 5),
        (lambda: builder.conversation(True, "contact"), 5),
        (builder.phishing, 5),
        (builder.attachment, 3),
    )
    actions = [k for k, _w in kinds]
    weights = [w for _k, w in kinds]
    while len(builder.out) < count:
        rng.choices(actions, weights)[0]()
    return builder.out[:count]


RISKY_MARKERS = (b"PayPal", b"WhatsApp", b"upw0rk", b".pdf.exe")


def more_mail(count: int, seed: int) -> list[bytes]:
    """``count`` further INBOX messages (another seed: new Message-IDs), for "new mail":
    always one risky message (an off-platform payment request) and ``count - 1`` ordinary
    ones, so that every round asks for the same label work."""
    ham: list[bytes] = []
    risky: list[bytes] = []
    for folder, raw in mailbox(40 * count, seed):
        if folder != "INBOX":
            continue
        if b"PayPal" in raw:
            risky.append(raw)
        elif not any(marker in raw for marker in RISKY_MARKERS):
            ham.append(raw)
    return ham[: count - 1] + risky[:1]


_MSGID_LINE = re.compile(rb"(?im)^message-id:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n")


def corpus_ham(directory: Path) -> list[bytes]:
    """The .eml files under ``directory`` (sorted, so the order is stable)."""
    return [p.read_bytes() for p in sorted(directory.rglob("*.eml")) if p.is_file()]


def with_corpus(
    generated: list[tuple[str, bytes]], real: list[bytes], seed: int = 7
) -> Iterator[tuple[str, bytes]]:
    """The generated mailbox with each ordinary INBOX message (no risky one) replaced by a
    real message, cycling through ``real``; every copy gets a fresh Message-ID."""
    rng = random.Random(seed)
    k = 0
    for folder, raw in generated:
        if folder != "INBOX" or any(word in raw for word in RISKY_MARKERS) or not real:
            yield folder, raw
            continue
        original = real[k % len(real)]
        k += 1
        head, sep, body = original.partition(b"\n\n")
        if not sep:
            head, sep, body = original.partition(b"\r\n\r\n")
        head = _MSGID_LINE.sub(b"", head + b"\n").rstrip(b"\r\n")
        fresh = f"Message-ID: <corpus-{k}.{rng.getrandbits(32):08x}@bench.example>".encode()
        yield folder, head + b"\n" + fresh + (sep or b"\n\n") + body


_HEADER = re.compile(rb"(?im)^(message-id|subject|from):[ \t]*([^\r\n]*)")


def reply_to(original: bytes, serial: int) -> bytes:
    """A short plain reply from the original's sender to one of its own earlier messages
    (In-Reply-To/References set): new mail that joins an existing thread."""
    found = {
        m.group(1).lower(): m.group(2).decode("ascii", "replace")
        for m in _HEADER.finditer(original.partition(b"\r\n\r\n")[0])
    }
    parent = found.get(b"message-id", "")
    subject = found.get(b"subject", "")
    sender = found.get(b"from", "Someone <someone@example.com>")
    domain = sender.rpartition("@")[2].rstrip(">") or "example.com"
    head = [
        f"From: {sender}",
        f"To: {ME[0]} <{ME[1]}>",
        f"Subject: {subject if subject.lower().startswith('re:') else 'Re: ' + subject}",
        f"Date: {format_datetime(START + timedelta(days=900, minutes=serial))}",
        f"Message-ID: <reply-{serial}@{domain}>",
        f"In-Reply-To: {parent}",
        f"References: {parent}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    body = "Hi Sam,\n\nOne more thing about this: could you send the updated files today?\n"
    return ("\n".join(head) + "\n\n" + body).replace("\n", "\r\n").encode()


def with_attachment(raw: bytes, size: int, serial: int) -> bytes:
    """``raw`` as a multipart/mixed message with a ``size``-byte PDF attachment (random
    bytes, base64) after its text: how mail with large attachments looks to a scan."""
    head, _, _body = raw.partition(b"\r\n\r\n")
    keep = [
        line
        for line in head.split(b"\r\n")
        if not line.lower().startswith((b"content-type", b"content-transfer", b"mime-version"))
    ]
    boundary = b"==attach%d==" % serial
    payload = base64.encodebytes(random.Random(serial).randbytes(size)).replace(b"\n", b"\r\n")
    return b"\r\n".join(
        [
            *keep,
            b"MIME-Version: 1.0",
            b'Content-Type: multipart/mixed; boundary="' + boundary + b'"',
            b"",
            b"--" + boundary,
            b"Content-Type: text/plain; charset=us-ascii",
            b"",
            b"The signed contract is attached.",
            b"--" + boundary,
            b'Content-Type: application/pdf; name="contract.pdf"',
            b"Content-Transfer-Encoding: base64",
            b'Content-Disposition: attachment; filename="contract.pdf"',
            b"",
            payload + b"--" + boundary + b"--",
            b"",
        ]
    )
