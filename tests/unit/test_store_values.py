"""Values on their way into the store: what any database accepts, whatever the mail held."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as hs

from guard.store import clean_text

CONTROLS = {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))}


@given(
    hs.text(), hs.one_of(hs.none(), hs.integers(0, 50)), hs.one_of(hs.none(), hs.integers(0, 60))
)
def test_a_line_has_no_control_or_surrogate_and_fits(
    text: str, length: int | None, max_bytes: int | None
) -> None:
    out = clean_text(text, length=length, max_bytes=max_bytes)
    data = out.encode("utf-8")  # no lone surrogate
    assert not CONTROLS & set(out)
    assert length is None or len(out) <= length
    assert max_bytes is None or len(data) <= max_bytes
    # Stable: a look-up, cleaned the same way, finds the value stored.
    assert clean_text(out, length=length, max_bytes=max_bytes) == out


@given(hs.text())
def test_text_keeps_tab_and_line_feed_only(text: str) -> None:
    out = clean_text(text, multiline=True)
    out.encode("utf-8")
    assert not (CONTROLS - {"\t", "\n"}) & set(out)
    assert out.count("\n") == text.replace("\r\n", "\n").count("\n") + text.replace(
        "\r\n", ""
    ).count("\r")


def test_examples() -> None:
    assert clean_text("Hello\x00World") == "HelloWorld"
    assert clean_text("Ana\tSmith\r\n") == "Ana Smith  "
    assert clean_text("caf\udce9") == "caf\ufffd"
    assert clean_text("a\r\nb\rc\x1b[0m", multiline=True) == "a\nb\nc[0m"
    assert clean_text("x" * 1200, length=998) == "x" * 998
    assert clean_text("\U00020000" * 10, max_bytes=10) == "\U00020000" * 2  # whole characters
    ordinary = "Re: Logo design, Ünïcode ok"
    assert clean_text(ordinary, length=998, max_bytes=1000) is ordinary  # no copy on the fast path
