"""Structural checks: what the headers, links and attachments say, in code rather than regex.

Each check yields :class:`Hit` records naming a check id from the rules file, which owns
its score, category and explanation; the engine turns hits into findings.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

from guard.message import Address, Message
from guard.policy.domains import (
    edit_distance,
    host_of,
    is_domain_like,
    org_domain,
    skeleton,
    unicode_host,
)


@dataclass(frozen=True, slots=True)
class Brand:
    """A platform, payment provider or bank whose name scammers borrow."""

    key: str
    names: tuple[str, ...]
    domains: tuple[str, ...]
    platform: bool = False
    generic: bool = False  # the name is an ordinary word: no look-alike search on it


@dataclass(frozen=True, slots=True)
class StructuralData:
    brands: tuple[Brand, ...] = ()
    freemail: frozenset[str] = frozenset()
    freemail_labels: frozenset[str] = frozenset()
    shorteners: frozenset[str] = frozenset()
    dangerous_ext: frozenset[str] = frozenset()
    macro_ext: frozenset[str] = frozenset()
    decoy_ext: frozenset[str] = frozenset()
    html_ext: frozenset[str] = frozenset()
    official_orgs: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Hit:
    check: str
    where: str
    evidence: str


_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f]")
_URL_IN_TEXT = re.compile(
    r"^\s*(?:https?://)?((?:[a-z0-9\-]+\.)+[a-z]{2,})(?:[/:?#][^\s]*)?\s*$", re.IGNORECASE
)
_EXECUTABLE_TYPES = (
    "application/x-msdownload",
    "application/x-dosexec",
    "application/x-executable",
    "application/vnd.microsoft.portable-executable",
    "application/x-ms-shortcut",
)


def show_address(addr: Address | None) -> str:
    if addr is None:
        return ""
    return f"{addr.name} <{addr.addr}>" if addr.name else addr.addr


def brand_of_org(data: StructuralData, org: str) -> Brand | None:
    for brand in data.brands:
        if org in brand.domains:
            return brand
    return None


def is_trusted_platform_sender(data: StructuralData, msg: Message) -> bool:
    """A platform's own mail: From on its domain and the receiving server verified it."""
    if msg.from_ is None:
        return False
    org = org_domain(msg.from_.domain)
    brand = brand_of_org(data, org)
    if brand is None or not brand.platform:
        return False
    if msg.auth.dmarc == "pass":
        return True
    return msg.auth.dkim == "pass" and any(org_domain(d) == org for d in msg.auth.dkim_domains)


# A platform's notification that carries someone's message ("New message from Owen P.",
# "pixelmonk sent you a message"): the words under it are the client's, not the platform's.
_RELAY = re.compile(
    r"new message|sent you (?:a |an )?(?:new )?message|unread message|new reply|replied to you"
    r"|nuevo mensaje|te (?:ha )?envi[oó] un mensaje|nova mensagem|enviou uma mensagem"
    r"|nouveau message|vous a envoy[ée] un message|neue nachricht|hat (?:dir|ihnen) eine nachricht"
    r"|nuovo messaggio|ti ha inviato un messaggio|nieuw bericht|новое сообщение"
    r"|отправил(?:а)? вам сообщение|нове повідомлення|nowa wiadomo[śs][ćc]|yeni mesaj"
    r"|pesan baru|tin nhắn mới|新消息|新留言|给你发了|رسالة جديدة",
    re.IGNORECASE,
)


def is_relayed_message(data: StructuralData, msg: Message) -> bool:
    """A platform's verified notification that relays a message someone wrote on it (the
    subject or the first lines say so): its text is judged as that person's words."""
    if not is_trusted_platform_sender(data, msg):
        return False
    head = (msg.text or msg.html_text)[:300]
    return bool(_RELAY.search(msg.subject or "") or _RELAY.search(head))


@functools.lru_cache(maxsize=1024)
def _name_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])")


def _brand_named(data: StructuralData, text: str) -> Brand | None:
    text = unicodedata.normalize("NFKC", text).lower()
    for brand in data.brands:
        for name in brand.names:
            # The substring test first: most display names contain no brand name at all.
            if name in text and _name_pattern(name).search(text):
                return brand
    return None


_LOOKALIKE_CACHE: dict[tuple[int, str], Brand | None] = {}


def _lookalike(data: StructuralData, host: str) -> Brand | None:
    """The brand ``host`` imitates, or None (official domains never match). Memoised."""
    key = (id(data), host)
    if key not in _LOOKALIKE_CACHE:
        if len(_LOOKALIKE_CACHE) > 20_000:
            _LOOKALIKE_CACHE.clear()
        _LOOKALIKE_CACHE[key] = _find_lookalike(data, host)
    return _LOOKALIKE_CACHE[key]


def _find_lookalike(data: StructuralData, host: str) -> Brand | None:
    org = org_domain(host)
    if org in data.official_orgs:
        return None
    decoded = unicode_host(host)
    labels = decoded.split(".")
    tokens: set[str] = set()
    for label in labels[:-1] if len(labels) > 1 else labels:
        tokens.add(label.replace("-", ""))
        tokens.update(t for t in label.split("-") if t)
    for brand in data.brands:
        if brand.generic:
            continue
        for name in brand.names:
            target = re.sub(r"[^a-z0-9]", "", name)
            if len(target) < 4:
                continue
            for token in tokens:
                sk = skeleton(token)
                if sk == target or (target in sk and len(target) >= 5):
                    return brand
                if len(target) >= 6 and edit_distance(sk, target, 1) <= 1:
                    return brand
    return None


def check_sender(data: StructuralData, msg: Message) -> Iterator[Hit]:
    sender = msg.from_
    if sender is None:
        return
    org = org_domain(sender.domain)
    shown = show_address(sender)
    if sender.name and org not in data.official_orgs:
        brand = _brand_named(data, sender.name)
        if brand is not None and org not in brand.domains:
            yield Hit("phishing.brand-display-name", "from", shown)
    seen: set[str] = set()
    hosts = [("from", sender.domain, shown)]
    hosts += [("reply_to", a.domain, show_address(a)) for a in msg.reply_to]
    if msg.return_path:
        hosts.append(("return_path", msg.return_path.rpartition("@")[2], msg.return_path))
    for where, host, shown_host in hosts:
        if host and host not in seen:
            seen.add(host)
            if _lookalike(data, host) is not None:
                yield Hit("phishing.lookalike-domain", where, shown_host)
    official = brand_of_org(data, org)
    auth = msg.auth
    failed = auth.dmarc == "fail" or auth.spf in ("fail", "softfail")
    signed = auth.dkim == "pass" and any(org_domain(d) == org for d in auth.dkim_domains)
    if official is not None and failed and not signed:
        yield Hit("phishing.spoofed-brand", "from", shown)


def check_auth(msg: Message) -> Iterator[Hit]:
    auth = msg.auth
    if auth.dmarc in ("fail", "quarantine", "reject"):
        yield Hit("phishing.dmarc-fail", "auth", f"dmarc={auth.dmarc}")
    if auth.spf in ("fail", "permerror"):
        yield Hit("phishing.spf-fail", "auth", f"spf={auth.spf}")
    elif auth.spf == "softfail":
        yield Hit("phishing.spf-softfail", "auth", "spf=softfail")
    if auth.dkim in ("fail", "permerror"):
        yield Hit("phishing.dkim-fail", "auth", f"dkim={auth.dkim}")


def _is_freemail(data: StructuralData, domain: str) -> bool:
    org = org_domain(domain)
    return org in data.freemail or org.split(".")[0] in data.freemail_labels


def check_reply_to(data: StructuralData, msg: Message) -> Iterator[Hit]:
    if msg.from_ is None or not msg.reply_to or msg.is_bulk:
        return
    from_org = org_domain(msg.from_.domain)
    for addr in msg.reply_to:
        if not addr.domain:
            continue
        if org_domain(addr.domain) != from_org:
            shown = f"From {msg.from_.addr}, Reply-To {addr.addr}"
            yield Hit("phishing.reply-to-mismatch", "reply_to", shown)
            if _is_freemail(data, addr.domain) and not _is_freemail(data, msg.from_.domain):
                yield Hit("phishing.reply-to-freemail", "reply_to", shown)
            return


def check_links(data: StructuralData, msg: Message) -> Iterator[Hit]:
    shortener_done = lookalike_done = mismatch_done = False
    for link in msg.links:
        host = host_of(link.href)
        if not host:
            continue
        org = org_domain(host)
        if not shortener_done and (host in data.shorteners or org in data.shorteners):
            shortener_done = True
            yield Hit("phishing.url-shortener", "links", link.href[:120])
        if not lookalike_done and _lookalike(data, host) is not None:
            lookalike_done = True
            yield Hit("phishing.lookalike-domain", "links", link.href[:120])
        if mismatch_done:
            continue
        m = _URL_IN_TEXT.match(link.text)
        if m is None or not is_domain_like(m.group(1).lower()):
            continue
        shown_org = org_domain(m.group(1).lower())
        if shown_org and shown_org != org:
            mismatch_done = True
            evidence = f"link text {link.text.strip()[:80]} goes to {host}"
            shown_brand = brand_of_org(data, shown_org)
            check = "phishing.link-brand-mismatch" if shown_brand else "phishing.link-text-mismatch"
            yield Hit(check, "links", evidence)


def _extensions(filename: str) -> list[str]:
    name = _BIDI.sub("", filename).strip().lower().rstrip(". ")
    return name.split(".")[1:]


def check_attachments(data: StructuralData, msg: Message) -> Iterator[Hit]:
    for att in msg.attachments:
        name = att.filename or ""
        exts = _extensions(name)
        last = exts[-1] if exts else ""
        shown = f"{name!r} ({att.declared_type or 'unknown type'}, {att.size} bytes)"
        if _BIDI.search(name):
            yield Hit("phishing.rtl-filename", "attachments", shown)
        if last in data.dangerous_ext or att.sniffed_type in _EXECUTABLE_TYPES:
            yield Hit("phishing.dangerous-attachment", "attachments", shown)
            if len(exts) >= 2 and exts[-2] in data.decoy_ext:
                yield Hit("phishing.double-extension", "attachments", shown)
        elif last in data.macro_ext:
            yield Hit("phishing.macro-attachment", "attachments", shown)
        elif last in data.html_ext:
            yield Hit("phishing.html-attachment", "attachments", shown)
        if att.encrypted:
            yield Hit("phishing.encrypted-archive", "attachments", shown)


def run_checks(data: StructuralData, msg: Message) -> list[Hit]:
    """All structural hits for ``msg`` (the caller decides which ones count)."""
    hits: list[Hit] = []
    hits.extend(check_sender(data, msg))
    hits.extend(check_auth(msg))
    hits.extend(check_reply_to(data, msg))
    hits.extend(check_links(data, msg))
    hits.extend(check_attachments(data, msg))
    return hits
