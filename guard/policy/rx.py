"""Match spans from RE2 without a Python object per match.

The policy layer only needs where a pattern matches. ``re2``'s ``finditer`` builds a match
object (and re-decodes offsets) for every hit, which costs more than the search itself on
short mail. :func:`spans` asks the compiled program for the whole-match span directly and
falls back to ``finditer`` when the binding does not offer that (another version of
google-re2). Patterns are compiled with ``never_capture``, so a span is all RE2 computes.
"""

from __future__ import annotations

from typing import Any

try:  # google-re2 >= 1.0: the compiled program behind re2.compile's object
    from re2 import _re2

    _UNANCHORED: Any = _re2.RE2.Anchor.UNANCHORED
except (ImportError, AttributeError):  # pragma: no cover - other bindings
    _UNANCHORED = None


def spans(compiled: Any, data: bytes | str, limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` non-empty match spans of ``compiled`` in ``data``, left to right.

    ``data`` must be ``bytes`` for the direct path (offsets are byte offsets; the policy
    layer passes bytes only for ASCII text, where they are character offsets too).
    """
    out: list[tuple[int, int]] = []
    program = getattr(compiled, "_regexp", None)
    if _UNANCHORED is None or program is None or not isinstance(data, bytes):
        for m in compiled.finditer(data):
            if m.end() > m.start():
                out.append(m.span())
                if len(out) >= limit:
                    break
        return out
    match = program.Match
    pos, end = 0, len(data)
    while pos <= end:
        start, stop = match(_UNANCHORED, data, pos, end)[0]
        if start < 0:
            break
        if stop > start:
            out.append((start, stop))
            if len(out) >= limit:
                break
            pos = stop
        else:
            pos = stop + 1
    return out
