"""Links: bare URLs found in plain text, and the bound on a link's ``href``.

Anchors of HTML bodies are collected by :mod:`guard.mail.html`; this module finds the
addresses a reader sees in plain text (http(s)://, www., messenger and shortener
links) and cuts any ``href`` to its limit.
"""

from __future__ import annotations

import re

from guard.mail.limits import MAX_HREF_CHARS, MAX_LINKS, SCRIPT_HREF_CHARS
from guard.mail.model import Link

# Bare URLs in plain text: http(s)://, www., and scheme-less messenger/shortener links.
# Each pattern starts with a literal, which the regex engine finds with a fast substring
# search; they run over the lower-cased text (same offsets), so no IGNORECASE is needed
# (it disables that fast path: one case-insensitive alternation cost ~140 µs per 2 KB).
_URL_CHAR = r"[^\s<>\"'`\u200b]"
_URL_SCHEME_RE = re.compile(r"://" + _URL_CHAR + "+")
_URL_WWW_RE = re.compile(r"www\." + _URL_CHAR + "+")
_URL_SHORT_RE = re.compile(r"\.(?:me|gg|link|ly|gd|gy|dog|com)/" + _URL_CHAR + "*")
_URL_SHORT_HOSTS = frozenset(
    {
        "wa.me",
        "wa.link",
        "t.me",
        "telegram.me",
        "telegram.dog",
        "m.me",
        "signal.me",
        "line.me",
        "discord.gg",
        "discord.com",  # only /invite/ links
        "chat.whatsapp.com",
        "api.whatsapp.com",
        "bit.ly",
        "cutt.ly",
        "tinyurl.com",
        "rb.gy",
        "is.gd",
    }
)
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_URL_TRAILING = ".,;:!?*'\""


def url_links(text: str, links: list[Link]) -> None:
    """Append the bare URLs of a plain-text body to ``links``, in text order."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters grow when lower-cased (U+0130)
        lowered = text.translate(_ASCII_LOWER)
    found: list[tuple[int, int]] = []
    for match in _URL_SCHEME_RE.finditer(lowered):
        start = match.start()
        if lowered.endswith("https", 0, start):
            start -= 5
        elif lowered.endswith("http", 0, start):
            start -= 4
        else:
            continue
        if start == 0 or not lowered[start - 1].isalnum():
            found.append((start, match.end()))
    if "www." in lowered:
        for match in _URL_WWW_RE.finditer(lowered):
            start = match.start()
            if start == 0 or not (lowered[start - 1].isalnum() or lowered[start - 1] in "/.@"):
                found.append((start, match.end()))
    for match in _URL_SHORT_RE.finditer(lowered):
        start = match.start()
        while start > 0 and lowered[start - 1] in _HOST_CHARS:
            start -= 1
        host = lowered[start : lowered.index("/", match.start())]
        if host not in _URL_SHORT_HOSTS or (start > 0 and lowered[start - 1] in "/@"):
            continue
        if host.endswith("discord.com") and not lowered.startswith("/invite/", match.start() + 4):
            continue
        found.append((start, match.end()))
    if len(found) > 1:
        found.sort()
    for start, end in found:
        if len(links) >= MAX_LINKS:
            return
        url = text[start:end].rstrip(_URL_TRAILING)
        for close, open_ in ((")", "("), ("]", "["), ("}", "{")):
            while url.endswith(close) and url.count(close) > url.count(open_):
                url = url[:-1].rstrip(_URL_TRAILING)
        if len(url) > 4:
            links.append(Link(url, url))


_SCRIPT_SCHEME_RE = re.compile(r"[\x00-\x20]*(?:javascript|vbscript|data)[\t\n\r]*:", re.I)


def bounded_href(href: str) -> str:
    """``href`` cut to MAX_HREF_CHARS, a ``data:``/``javascript:`` one to SCRIPT_HREF_CHARS."""
    if len(href) > SCRIPT_HREF_CHARS and _SCRIPT_SCHEME_RE.match(href[:64]):
        return href[:SCRIPT_HREF_CHARS]
    return href[:MAX_HREF_CHARS]
