"""The one home of untrusted-text cleaning: everything that came from mail (or a bundle,
or a server's reply) is made safe here before the guard shows or writes it.

Four kinds of output; for each, what could act on a reader is removed or escaped:

- :func:`safe_text` (and :func:`safe_block` for a body kept in lines): mail text for the
  digest and the evidence timeline. Escape sequences, control, bidi and invisible
  characters are removed, white space collapsed, the text shortened and
  :func:`defang`-ed (``hxxps://evil[.]example``), so no client makes a link of it. HTML
  escaping is left to the templates' autoescape.
- :func:`one_line` / :func:`printable_line`: names that are not mail prose and must stay
  exact, not defanged (a folder "INBOX.Sent", a rule id, a thread id): :func:`one_line`
  removes what a renderer hides (the digest), :func:`printable_line` turns every
  unprintable character into a space (the evidence timeline and its hash mail).
- :func:`clean`: text for a terminal; unprintable characters are shown as escapes
  (``\\x1b``, ``\\u202e``) rather than removed, so the user sees that they were there.
- :func:`json_line`: JSON Lines output that escapes what a terminal acts on.

Imports nothing from ``guard`` (the command line imports it at start, so it stays light:
the big character classes for :func:`defang` are built on import, in about 30 ms).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

import idna

__all__ = [
    "MAX_SNIPPET",
    "clean",
    "defang",
    "display_address",
    "json_line",
    "one_line",
    "printable_line",
    "prose",
    "safe_block",
    "safe_text",
]

MAX_SNIPPET = 240
"""Characters of mail text shown in one line by default."""
MAX_ADDRESS = 160
"""Characters of a name or an address shown."""


# --------------------------------------------------------------------------- mail text

# ANSI/VT escape sequences (CSI, OSC ... BEL/ST, two-character escapes), then everything else
# a terminal or renderer acts on or hides: C0/C1 controls, bidi embeddings, overrides and
# isolates, zero-width and other format characters, line separators, lone surrogates, tags.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]{0,256}(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
)
_BREAKS = re.compile("[\t\n\v\f\r\x85\u2028\u2029]")

# Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt): characters
# a renderer shows as nothing, whether or not they are assigned yet. Python has no lookup
# for the property, so it is listed here and joined with every format character (Cf) of
# the running Python's Unicode tables (Cf lives in planes 0, 1 and 14 only).
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)  # fmt: skip
# Also gone: C0/C1 controls, lone surrogates, and the interlinear annotation marks.
_ALSO_HIDDEN = ((0x00, 0x1F), (0x7F, 0x9F), (0xD800, 0xDFFF), (0xFFF9, 0xFFFB))


def _char_class(points: set[int]) -> str:
    runs: list[list[int]] = []
    for c in sorted(points):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in runs
    )


def _unicode_classes() -> tuple[str, str]:
    """(characters to remove, marks and symbols that can be part of a domain label)."""
    hidden = {c for lo, hi in (*_DEFAULT_IGNORABLE, *_ALSO_HIDDEN) for c in range(lo, hi + 1)}
    marks: set[int] = set()
    for plane in (range(0x80, 0x20000), range(0xE0000, 0xE1000)):
        for c in plane:
            category = unicodedata.category(chr(c))
            if category == "Cf":
                hidden.add(c)
            elif category[0] == "M" or category == "So":  # accents, vowel signs, emoji
                marks.add(c)
    return _char_class(hidden), _char_class(marks - hidden)


_HIDDEN_CLASS, _MARK_CLASS = _unicode_classes()
_INVISIBLE = re.compile(f"[{_HIDDEN_CLASS}]")
_SPACES = re.compile(r"\s+")

# Defanging. A host is dot-separated labels ending in an alphabetic (or punycode) TLD; the
# ideographic and full-width dots count, since IDNA maps them to "." in browsers.
_DOT = "[.\u3002\uff0e\uff61]"
# Labels may start or end with "_" or "-" (resolvers and some browsers accept
# "_evil.example"); a host ends where no letter or digit follows, unless what follows is
# the local part of an e-mail address ("john.doe@"), which is not a host.
_LC = rf"[\w{_MARK_CLASS}-]"  # a character of a label
_LABEL = rf"{_LC}+"
_TLD = rf"(?:[^\W\d_](?:[^\W\d_]|[{_MARK_CLASS}]){{1,62}}|[xX][nN]--[a-zA-Z0-9-]{{1,59}})"
_HOST = rf"(?:{_LABEL}{_DOT})+{_TLD}"
_IPV4 = r"\d{1,3}(?:" + _DOT + r"\d{1,3}){3}"
# A host is only looked for where a run of labels starts (not after "label."): a long
# "a.a.a.a…1" is then tried once, in linear time, instead of once per label.
_HOST_START = rf"(?<!{_LC})(?<!{_LC}{_DOT})"
_END = r"(?![^\W_])(?![\w-]*@)"
_DEFANG = re.compile(
    # a URL with an authority: scheme://[user@]host[:port] then the rest up to white space
    r"(?P<scheme>(?<![a-zA-Z])[a-zA-Z][a-zA-Z0-9+-]{0,30})://(?P<authority>[^\s/?#<>\"'`\\]*)"
    r"(?P<rest>[^\s<>\"'`]*)"
    # schemes that run code or carry a document without "//"
    r"|(?P<pseudo>\b(?i:javascript|vbscript|data(?=:\w+/)))\s*:"
    # a bare host name, also the domain of an e-mail address (the local part stays)
    rf"|{_HOST_START}(?P<host>{_HOST}){_END}|(?<![\w-])(?P<ip>{_IPV4}){_END}"
)
_HOST_ONLY = re.compile(rf"{_HOST_START}{_HOST}{_END}")
_SCHEMES = {"http": "hxxp", "https": "hxxps", "ftp": "fxp", "ftps": "fxps", "ws": "wxs"}
_SCHEMES["wss"] = "wxss"
_DEFANGED_SCHEMES = frozenset(_SCHEMES.values())
# a dot that is not already bracketed as "[.]"
_RAW_DOT = re.compile(rf"(?<!\[){_DOT}|{_DOT}(?!\])")
_MAX_PASSES = 8


def _defang_dots(text: str) -> str:
    return _RAW_DOT.sub("[.]", text)


def _defang_match(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    if scheme is not None:
        lower = scheme.lower()
        if lower in _SCHEMES:
            head = _SCHEMES[lower] + "://"
        elif lower in _DEFANGED_SCHEMES:
            head = scheme + "://"
        else:  # skype://, viber://, tg://... are links in some clients too
            head = scheme + "[:]//"
        authority = _defang_dots(match.group("authority"))
        rest = _HOST_ONLY.sub(lambda m: _defang_dots(m.group()), match.group("rest"))
        return head + authority + rest
    pseudo = match.group("pseudo")
    if pseudo is not None:
        return pseudo + "[:]"
    return _defang_dots(match.group("host") or match.group("ip"))


def defang(text: str) -> str:
    """Break every link a mail client or phone could make of ``text``, readably.

    ``https://pay.example.com/x`` → ``hxxps://pay[.]example[.]com/x``; a bare
    ``www.evil.example`` → ``www[.]evil[.]example``; ``bob@evil.example`` →
    ``bob@evil[.]example``; ``_evil.example_`` → ``_evil[.]example_``; IP addresses and
    punycode or Unicode domains alike, a Unicode one followed by its punycode
    (``pаypal[.]com (xn--pypal-4ve[.]com)``); ``javascript:`` → ``javascript[:]``.
    Over-eager on purpose: ``invoice.zip`` becomes ``invoice[.]zip`` (and ``.zip`` is a
    real top-level domain).

    Defanged text comes back unchanged: the substitution is repeated until nothing
    changes (one pass almost always; a crafted string such as ``x.https://`` can expose
    a new match once the first is bracketed), so ``defang(defang(t)) == defang(t)``.
    """
    for _ in range(_MAX_PASSES):
        result = _DEFANG.sub(_defang_match, text)
        if result == text:
            break
        text = result
    return _with_punycode(text)


# A host as defang() leaves it: labels joined by "[.]".
_DEFANGED_HOST = re.compile(rf"(?<!{_LC})(?:{_LABEL}\[\.\])+{_LABEL}")


def _ace_label(label: str) -> str:
    """One label as the DNS sees it: IDNA 2008 with UTS #46 mapping (what browsers do),
    else IDNA 2003 (emoji domains), else the bare Punycode of the letters as written;
    never an exception."""
    if label.isascii():
        return label.lower()
    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        pass
    try:
        return label.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    try:
        return "xn--" + label.lower().encode("punycode").decode("ascii")
    except UnicodeError:
        return "xn--?"


def _ace_host(host: str) -> str:
    return "[.]".join(_ace_label(label) for label in host.split("[.]"))


def _punycode_beside(match: re.Match[str]) -> str:
    host = match.group()
    if host.isascii():
        return host
    note = f" ({_ace_host(host)})"
    if match.string.startswith(note, match.end()):
        return host  # already annotated: defang() stays idempotent
    return host + note


def _with_punycode(text: str) -> str:
    """``pаypal[.]com`` (a Cyrillic "а") → ``pаypal[.]com (xn--pypal-4ve[.]com)``: a
    non-ASCII host is followed by the name the DNS is asked for, so look-alike letters
    cannot pass for the real domain."""
    if text.isascii():
        return text
    return _DEFANGED_HOST.sub(_punycode_beside, text)


def one_line(text: str | None, limit: int) -> str:
    """One line without escape sequences, control, bidi or invisible characters, shortened
    to ``limit`` (with "…"); not defanged: for names that are not hosts ("INBOX.Sent")."""
    if not text:
        return ""
    text = _ANSI.sub("", text)
    text = _BREAKS.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def safe_text(text: str | None, limit: int = MAX_SNIPPET) -> str:
    """Mail-supplied text as one safe line: escape sequences and control, bidi and
    invisible characters removed, white space collapsed, shortened to ``limit``
    characters (with "…"), then :func:`defang`-ed. HTML escaping is the template's job."""
    return defang(one_line(text, limit))


def prose(text: str) -> str:
    """White space (line breaks included) collapsed to single spaces."""
    return _SPACES.sub(" ", text).strip()


def display_address(name: str | None, addr: str | None) -> str:
    """``Name <addr>`` (both made safe), or whichever of the two there is, or ""."""
    name, addr = safe_text(name, MAX_ADDRESS), safe_text(addr, MAX_ADDRESS)
    if name and addr and name.lower() != addr.lower():
        return f"{name} <{addr}>"
    return addr or name


def safe_block(text: str, limit: int) -> tuple[str, bool]:
    """Mail text kept in lines, each made safe like :func:`safe_text`; at most
    ``limit`` characters and two blank lines in a row."""
    out: list[str] = []
    total = 0
    blank = 0
    shortened = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        safe = safe_text(line, limit)
        blank = blank + 1 if not safe else 0
        if blank > 2:
            continue
        if total + len(safe) > limit:
            shortened = True
            break
        out.append(safe)
        total += len(safe) + 1
    return "\n".join(out).strip("\n"), shortened


def printable_line(text: str, limit: int = 200) -> str:
    """One line of printable characters, for names that are not mail text and must stay
    exact (rule ids, folders, thread ids): "INBOX.Sent" is a folder, not a host."""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --------------------------------------------------------------------------- terminals and JSON

_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_SPACE_RUNS = re.compile(" {2,}")
_JSON_UNSAFE = re.compile(
    "[\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
    "\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]"
)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clean(text: str, *, multiline: bool = False) -> str:
    """Text safe to show on a terminal: no control or invisible characters.

    Tabs, other spaces and (unless ``multiline``) line breaks become one space; control
    characters (ANSI escapes), bidi overrides, zero-width and other format characters,
    surrogates and unassigned code points are shown as ``\\x1b`` / ``\\u202e`` escapes.
    """
    if text.isascii() and not _NOT_PRINTABLE.search(text):
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch == "\n" and multiline:
            out.append("\n")
        elif ch in "\t\r\n\v\f" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        else:
            out.append(_escape_char(ch))
    result = "".join(out)
    return result if multiline else _SPACE_RUNS.sub(" ", result).strip()


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells astral characters as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_line(obj: Any) -> str:
    """Compact JSON that keeps letters readable but escapes anything a terminal acts on.

    ``json.dumps`` already escapes C0 controls; DEL, C1 controls (``\\x9b`` is CSI on
    some terminals), bidi and zero-width characters, line separators, lone surrogates
    and Unicode tag characters are escaped here too. The decoded value is unchanged.
    """
    return _JSON_UNSAFE.sub(_json_escape, json.dumps(obj, ensure_ascii=False))
