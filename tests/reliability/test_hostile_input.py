"""Hostile and malformed mail through parsing and the policy engine: nothing escapes.

The fast variant runs a few hundred mutated messages and the extreme shapes once; set
INBOX_GUARD_SOAK=1 for the long variant (10,000 mutations). Limits that apply: at most
``MAX_PARTS`` MIME parts are read, every text field is capped at ``MAX_TEXT_CHARS``, the
engine scans at most ``MAX_SCAN_CHARS`` per field; what was skipped is recorded in the
message's defects or the verdict's notes, never silently dropped.
"""

from __future__ import annotations

import base64
import os
import resource
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from support.mail import CONTACT_BODY, PAYMENT_BODY, make

from guard.message import MAX_PARTS, MAX_TEXT_CHARS, parse_message
from guard.policy import LEVELS, load_rules
from guard.policy.engine import MAX_SCAN_CHARS

SOAK = os.environ.get("INBOX_GUARD_SOAK") == "1"
RULES = load_rules()

MULTIPART = (
    b"From: =?utf-8?b?" + base64.b64encode("Клиент".encode()) + b"?= <c@x.example>\r\n"
    b"To: me@work.example\r\nSubject: =?iso-8859-1?q?Caf=E9?=\r\n"
    b"Message-ID: <m1@x.example>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="BOUND"\r\n\r\n'
    b"--BOUND\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"I can pay you directly on PayPal to avoid the fees =E2=80=94 ok?\r\n"
    b"--BOUND\r\nContent-Type: text/html; charset=windows-1252\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(b"<p>Add me on <a href='https://wa.me/447700900123'>WhatsApp</a></p>")
    + b'\r\n--BOUND\r\nContent-Type: application/zip; name="a.zip"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nUEsDBBQAAQAIAAAAIQA=\r\n--BOUND--\r\n"
)
SEEDS = [MULTIPART, make(body=PAYMENT_BODY)[0], make(body=CONTACT_BODY)[0]]


def judge(raw: bytes) -> None:
    """What the scanner does with every fetched message; must never raise."""
    msg = parse_message(raw)
    verdict = evaluate_rules(msg)
    assert verdict.risk in LEVELS
    assert len(msg.text) <= MAX_TEXT_CHARS and len(msg.html_text) <= MAX_TEXT_CHARS


def evaluate_rules(msg: object) -> object:
    from guard.policy import evaluate

    return evaluate(RULES, msg)  # type: ignore[arg-type]


MUTATIONS: list[Callable[[bytes, hs.DrawFn], bytes]] = [
    lambda raw, draw: raw[: draw(hs.integers(0, len(raw)))],  # truncated anywhere
    lambda raw, draw: raw.replace(b"--BOUND", b"--BOUNX", draw(hs.integers(1, 3))),
    lambda raw, draw: raw.replace(b"charset=utf-8", b"charset=" + draw(hs.binary(max_size=12))),
    lambda raw, draw: raw.replace(
        b"base64", b"base64\r\n\r\n" + draw(hs.binary(min_size=1, max_size=40))
    ),
    lambda raw, draw: raw.replace(b"quoted-printable", b"quoted-printable\r\n\r\n=ZZ=\r\n=E"),
    lambda raw, draw: raw.replace(b"\r\n", b"\n" if draw(hs.booleans()) else b"\r"),
    lambda raw, draw: raw.replace(b"Subject:", b"Subject:\r\n " * draw(hs.integers(1, 500))),
    lambda raw, draw: draw(hs.binary(max_size=64)) + raw,
    lambda raw, draw: raw + b"\x00" * draw(hs.integers(1, 2000)),
    lambda raw, draw: raw.replace(b"To:", b"To: \xff\xfe\xc3(\xe9 <x@\xe9.example>\r\nX-8bit:"),
    lambda raw, draw: bytes(
        b ^ draw(hs.integers(0, 255)) if i % 7 == 3 else b for i, b in enumerate(raw)
    ),
]


@settings(
    max_examples=10_000 if SOAK else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not SOAK,
)
@given(hs.data())
def test_mutated_messages_never_escape(data: hs.DataObject) -> None:
    raw = data.draw(hs.sampled_from(SEEDS))
    for _ in range(data.draw(hs.integers(1, 3))):
        mutate = data.draw(hs.sampled_from(MUTATIONS))
        raw = mutate(raw, data.draw)
    judge(raw)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_ten_thousand_parts_are_read_up_to_the_limit_and_noted() -> None:
    parts = b"".join(
        b"--B\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(10_000)
    )
    raw = (
        b"From: a@x.example\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + parts + b"--B--\r\n"
    )
    msg = parse_message(raw)
    assert any(str(MAX_PARTS) in d or "parts" in d for d in msg.defects), msg.defects
    judge(raw)


def test_two_hundred_levels_of_nesting() -> None:
    raw = b"Content-Type: text/plain\r\n\r\ninnermost: pay me directly by PayPal\r\n"
    for depth in range(200):
        b = b"L%d" % depth
        raw = (
            b'Content-Type: multipart/mixed; boundary="'
            + b
            + b'"\r\n\r\n--'
            + b
            + b"\r\n"
            + raw
            + b"\r\n--"
            + b
            + b"--\r\n"
        )
    raw = b"From: a@x.example\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + raw
    judge(raw)


@pytest.mark.parametrize("size_mb", [50])
def test_a_fifty_megabyte_single_line_is_capped_and_noted(size_mb: int) -> None:
    line = b"A" * (size_mb * 1024 * 1024)
    raw = b"From: a@x.example\r\nSubject: huge\r\n\r\n" + line + b" pay me via PayPal\r\n"
    msg = parse_message(raw)
    assert len(msg.text) <= MAX_TEXT_CHARS
    assert msg.defects  # the cut is recorded
    verdict = evaluate_rules(msg)
    assert getattr(verdict, "notes", ()) or len(msg.text) <= MAX_SCAN_CHARS
    # Memory stays within a small multiple of the message itself.
    assert _peak_rss_mb() < 2048
