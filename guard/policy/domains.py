"""Domain helpers for the structural checks: organisational domains and look-alikes."""

from __future__ import annotations

import contextlib
import functools
import re
from urllib.parse import urlsplit

import tldextract

# Offline: use the Public Suffix List snapshot bundled with tldextract, never fetch it.
_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

# Digits and look-alike letters used in place of letters in spoofed domain names.
_SKELETON = str.maketrans(
    {
        "0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
        "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "к": "k",
        "і": "i", "ј": "j", "ԁ": "d", "һ": "h", "ѕ": "s", "ԝ": "w", "ӏ": "l", "ο": "o",
        "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ρ": "p", "τ": "t", "υ": "u",
    }
)  # fmt: skip
_MULTI = (("rn", "m"), ("vv", "w"), ("cl", "d"), ("ii", "u"))
_HOST_RE = re.compile(r"^[a-z0-9.\-]+$")


@functools.lru_cache(maxsize=4096)
def org_domain(host: str) -> str:
    """The registrable ("organisational") domain of ``host``: ``mail.upwork.com`` → ``upwork.com``.

    Hosts under a suffix the Public Suffix List does not know (``.example``, ``.local``)
    are cut to their last two labels.
    """
    host = host.strip().strip(".").lower()
    if not host:
        return ""
    parts = _EXTRACT(host)
    if parts.suffix and parts.domain:
        return f"{parts.domain}.{parts.suffix}"
    return ".".join(host.split(".")[-2:])


def host_of(url: str) -> str:
    """The lower-cased host name of ``url`` ("" when it has none); tolerates missing schemes."""
    url = url.strip()
    if not url:
        return ""
    if "://" not in url[:12]:
        if url.lower().startswith(("mailto:", "tel:", "sms:", "skype:", "javascript:", "data:")):
            return ""
        url = "http://" + url
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


@functools.lru_cache(maxsize=4096)
def unicode_host(host: str) -> str:
    """Decode punycode labels (``xn--upwrk-lye.com`` → ``upwоrk.com``) for comparison."""
    labels = []
    for label in host.split("."):
        if label.startswith("xn--"):
            with contextlib.suppress(UnicodeError, ValueError):
                label = label[4:].encode("ascii").decode("punycode")
        labels.append(label)
    return ".".join(labels)


def skeleton(word: str) -> str:
    """Fold digits and look-alike letters so ``upw0rk`` and ``upwоrk`` both read ``upwork``."""
    word = word.lower().translate(_SKELETON)
    for a, b in _MULTI:
        word = word.replace(a, b)
    return word


def edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Levenshtein distance, giving up (returning ``limit + 1``) once it exceeds ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def is_domain_like(text: str) -> bool:
    return bool(_HOST_RE.match(text)) and "." in text
