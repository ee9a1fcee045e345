"""Hostile and malformed mail through parsing and the policy engine: nothing escapes.

The fast variant runs a few hundred mutated messages and the extreme shapes once; set
INBOX_GUARD_SOAK=1 for the long variant (10,000 mutations). Limits that apply: at most
``MAX_PARTS`` MIME parts are read, every text field is capped at ``MAX_TEXT_CHARS``, the
engine scans at most ``MAX_SCAN_CHARS`` per field; what was skipped is recorded in the
message's defects or the verdict's notes, never silently dropped, and the message is marked
unchecked (``Message.unchecked``, ``Verdict.unchecked`` and a ``guard.unchecked`` finding).

Padding cannot hide a risky sentence: every shape below that wraps ``PAYMENT_BODY`` (HIGH on
its own) must still be judged HIGH. Time and memory per message are bounded: the extreme
shapes run in a child process each, which reports its own peak RSS (``ru_maxrss`` of that
child only, so what other tests allocated does not count) and the time it took; the bound
asserted is on memory, relative to the message size (times are printed, not asserted).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from support.mail import CONTACT_BODY, PAYMENT_BODY, make

from guard.mail import MAX_PARTS, MAX_TEXT_CHARS, parse_message
from guard.policy import LEVELS, load_rules
from guard.policy.model import UNCHECKED_RULE

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


# ------------------------------------------------------------------ extreme shapes in a child

HEAD = (
    b"From: Dana <dana@client.example>\r\nTo: me@work.example\r\nSubject: hello\r\n"
    b"MIME-Version: 1.0\r\n"
)
RISKY = PAYMENT_BODY.encode()


def _nested_multipart(depth: int) -> bytes:
    raw = b"Content-Type: text/plain\r\n\r\n" + RISKY + b"\r\n"
    for level in range(depth):
        b = b"L%d" % level
        raw = (
            b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n--' + b + b"\r\n"
            + raw + b"\r\n--" + b + b"--\r\n"
        )  # fmt: skip
    return b"From: a@x.example\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + raw


# name -> (builder source, evaluated in the child; the risk the message must get, or None).
SHAPES: dict[str, tuple[str, str | None]] = {
    "html_alternative_only": (
        "HEAD + b'Content-Type: multipart/alternative; boundary=\"A\"\\r\\n\\r\\n--A\\r\\n'"
        " b'Content-Type: text/plain\\r\\n\\r\\nHi, the HTML version has the details.\\r\\n'"
        " b'--A\\r\\nContent-Type: text/html\\r\\n\\r\\n<p>' + RISKY + b'</p>\\r\\n--A--\\r\\n'",
        "high",
    ),
    "thousand_empty_parts": (
        "HEAD + b'Content-Type: multipart/mixed; boundary=\"B\"\\r\\n\\r\\n'"
        " + b'--B\\r\\nContent-Type: text/plain\\r\\n\\r\\n\\r\\n' * 1000"
        " + b'--B\\r\\nContent-Type: text/plain\\r\\n\\r\\n' + RISKY + b'\\r\\n--B--\\r\\n'",
        "high",
    ),
    "two_mb_html_comment": (
        "HEAD + b'Content-Type: text/html\\r\\n\\r\\n<html><body><!--' + b'x' * (2 << 20)"
        " + b'--><p>' + RISKY + b'</p></body></html>\\r\\n'",
        "high",
    ),
    "million_chars_padding": (
        "HEAD + b'Content-Type: text/plain\\r\\n\\r\\n' + b'padding ' * 125_000"
        " + b'\\r\\n' + RISKY + b'\\r\\n'",
        "high",
    ),
    "thousand_levels_of_nesting": ("_nested_multipart(1000)", "high"),
    "120k_nested_divs": (
        "HEAD + b'Content-Type: text/html\\r\\n\\r\\n<html><body>' + b'<div>' * 120_000"
        " + b'<p>' + RISKY + b'</p>' + b'</div>' * 120_000 + b'</body></html>\\r\\n'",
        "high",
    ),
    "320k_adjacent_encoded_words": (
        "b'From: a@x.example\\r\\nSubject: ' + b'=?utf-8?q?a?= ' * 320_000"
        " + b'\\r\\n\\r\\n' + RISKY + b'\\r\\n'",
        "high",
    ),
    "ten_mb_subject": (
        "b'From: a@x.example\\r\\nSubject: =?utf-8?b?' + base64.b64encode(b'a' * (15 << 19))"
        " + b'?=\\r\\n\\r\\n' + RISKY + b'\\r\\n'",
        "high",
    ),
    "66mb_folded_subject": (
        "b'From: a@x.example\\r\\nSubject:' + b'\\r\\n ' * (22 << 20) + b' hi\\r\\n\\r\\n'"
        " + RISKY + b'\\r\\n'",
        "high",
    ),
    "fifty_mb_single_line": (
        "b'From: a@x.example\\r\\nSubject: huge\\r\\n\\r\\n' + b'A' * (50 << 20)"
        " + b' ' + RISKY + b'\\r\\n'",
        "high",
    ),
}
# Shapes whose message is not read whole: the verdict must say so.
UNCHECKED_SHAPES = {
    "thousand_empty_parts",
    "two_mb_html_comment",
    "million_chars_padding",
    "thousand_levels_of_nesting",
    "120k_nested_divs",
    "320k_adjacent_encoded_words",
    "ten_mb_subject",
    "66mb_folded_subject",
    "fifty_mb_single_line",
}

# Two children per shape: one builds the message into a file (building it makes
# temporary copies, which must not count), the other reads it back (one copy), then parses
# and judges it, and reports its own peak RSS before and after.
_BUILD = textwrap.dedent(
    """
    import base64, sys
    sys.path[:0] = {paths!r}
    from test_hostile_input import HEAD, RISKY, _nested_multipart
    with open({path!r}, "wb") as out:
        out.write({source})
    """
)
_MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    from guard.mail import parse_message
    from guard.policy import evaluate, load_rules
    rules = load_rules()
    evaluate(rules, parse_message(b"Subject: warm\\r\\n\\r\\nhello"))  # compiled automata
    with open({path!r}, "rb") as source:
        raw = source.read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    msg = parse_message(raw)
    verdict = evaluate(rules, msg)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{
        "size": len(raw), "risk": verdict.risk, "seconds": seconds,
        "rss_before_kb": before, "rss_peak_kb": peak,
        "msg_unchecked": list(msg.unchecked), "unchecked": list(verdict.unchecked),
        "rules": [f.rule for f in verdict.findings],
    }}))
    """
)


def _child(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def run_shape(name: str, tmp_path: Path) -> dict[str, object]:
    """Parse and judge one shape in a fresh child; its own peak RSS and time."""
    here = Path(__file__).resolve().parent
    path = str(tmp_path / f"{name}.eml")
    _child(_BUILD.format(paths=[str(here), str(here.parent)], path=path, source=SHAPES[name][0]))
    out = _child(_MEASURE.format(path=path))
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


# Peak RSS of the child over what it held before parsing (the raw bytes, the rules), as a
# multiple of the message size, plus a fixed allowance. Generous: catches the 14x of the
# folded Subject (915 MB for 66 MB), not allocator noise.
RSS_FACTOR = 6
RSS_ALLOWANCE_MB = 150


@pytest.mark.parametrize("name", sorted(set(SHAPES) - {"fifty_mb_single_line"}))
def test_extreme_shapes_are_judged_bounded_and_marked(name: str, tmp_path: Path) -> None:
    result = run_shape(name, tmp_path)
    size_mb = int(result["size"]) / (1 << 20)  # type: ignore[call-overload]
    grown_mb = (int(result["rss_peak_kb"]) - int(result["rss_before_kb"])) / 1024  # type: ignore[call-overload]
    print(
        f"\n{name}: {size_mb:.1f} MB, {result['seconds']:.2f} s, peak RSS "
        f"{int(result['rss_peak_kb']) / 1024:.0f} MB (+{grown_mb:.0f} MB), risk {result['risk']}"  # type: ignore[call-overload]
    )
    expected = SHAPES[name][1]
    if expected is not None:
        assert result["risk"] == expected, result
    if name in UNCHECKED_SHAPES:
        assert result["unchecked"], result
        assert UNCHECKED_RULE in result["rules"]  # type: ignore[operator]
    else:
        assert not result["unchecked"], result
    assert grown_mb < RSS_FACTOR * size_mb + RSS_ALLOWANCE_MB, result


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


def test_a_fifty_megabyte_single_line_is_capped_and_noted(tmp_path: Path) -> None:
    """The cut is recorded and the end of the line still read; memory in the child only
    (the old version read the whole pytest process's peak, reached by earlier tests)."""
    result = run_shape("fifty_mb_single_line", tmp_path)
    assert result["risk"] == "high"
    assert any("truncated" in note for note in result["msg_unchecked"])  # type: ignore[attr-defined]
    size_mb = int(result["size"]) / (1 << 20)  # type: ignore[call-overload]
    grown_mb = (int(result["rss_peak_kb"]) - int(result["rss_before_kb"])) / 1024  # type: ignore[call-overload]
    assert grown_mb < RSS_FACTOR * size_mb + RSS_ALLOWANCE_MB
