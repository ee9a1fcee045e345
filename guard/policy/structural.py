"""Structural checks: what the headers, links and attachments say, in code rather than regex.

Each check yields :class:`Hit` records naming a check id from the rules file, which owns
its score, category and explanation; the engine turns hits into findings.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from guard.mail import Address, Message
from guard.policy.brands import Brand, Catalogue
from guard.policy.domains import (
    host_of,
    is_domain_like,
    org_domain,
    unicode_host,
)


def _no_brands() -> Catalogue:
    return Catalogue(())


@dataclass(frozen=True, slots=True)
class StructuralData:
    catalogue: Catalogue = field(default_factory=_no_brands)
    """The well-known senders whose names phishing borrows (``brands.toml``)."""
    freemail: frozenset[str] = frozenset()
    freemail_labels: frozenset[str] = frozenset()
    shorteners: frozenset[str] = frozenset()
    dangerous_ext: frozenset[str] = frozenset()
    macro_ext: frozenset[str] = frozenset()
    decoy_ext: frozenset[str] = frozenset()
    html_ext: frozenset[str] = frozenset()
    lure_hosts: frozenset[str] = frozenset()
    """Hosts (and their subdomains) where anyone can put up a page or a form."""
    lure_paths: tuple[tuple[str, str], ...] = ()
    """(host, path prefix) pairs: a shared host where only some paths are such pages."""
    meeting_hosts: frozenset[str] = frozenset()
    hosted_senders: frozenset[str] = frozenset()
    """Domains under which anyone's site gets a subdomain that can also send mail."""
    """Organisational domains of meeting and calendar services, ordinary in invites."""


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
    """The brand whose own domain ``org`` is (or lies under), or None."""
    return data.catalogue.brand_of_domain(org)


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


def _lookalike(data: StructuralData, host: str) -> Brand | None:
    """The brand ``host`` imitates in its registrable label (``paypa1-secure.com``) or in
    the labels in front of it (``paypal.com.account-check.example``); None for official
    domains."""
    return data.catalogue.lookalike(host) or data.catalogue.subdomain_brand(host)


def _core_brand(brand: Brand) -> bool:
    """Platforms and payment providers: their name alone in a display name on another
    domain is phishing. For any other brand the claim needs a lure or a link to count (see
    ``guard.policy.impersonation``)."""
    return brand.platform or brand.family == "payment"


def check_sender(data: StructuralData, msg: Message) -> Iterator[Hit]:
    sender = msg.from_
    if sender is None:
        return
    org = org_domain(sender.domain)
    shown = show_address(sender)
    if sender.name and brand_of_org(data, org) is None:
        brand = data.catalogue.named(sender.name, display_name=True)
        if brand is not None and _core_brand(brand):
            yield Hit("phishing.brand-display-name", "from", shown)
    domain = sender.domain.lower().rstrip(".")
    if any(domain.endswith("." + d) for d in data.hosted_senders):
        yield Hit("phishing.hosted-sender", "from", shown)
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


# Browsers drop ASCII tabs and newlines anywhere in a URL and leading controls and spaces.
_URL_IGNORED = str.maketrans("", "", "\t\n\r")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_SCRIPT_SCHEMES = ("javascript:", "vbscript:", "data:")
# Harmless placeholders some newsletters use for buttons: "javascript:void(0)", "javascript:;".
_SCRIPT_NOOP = re.compile(r"javascript:\s*(?:void\s*\(?\s*0\s*\)?)?\s*;?\s*$")
# A data: URL of an image is a picture, not a page.
_DATA_IMAGE = re.compile(r"data:image/(?:png|jpe?g|gif|webp|bmp);")


def _script_href(href: str) -> bool:
    """A link that runs script or opens an embedded document instead of a web page."""
    if not href or (href[0].isalnum() and href[0] not in "jJvVdD"):
        return False  # the common case, an http(s) address, decided at once
    url = href.translate(_URL_IGNORED).lstrip(_C0_AND_SPACE).lower()
    if not url.startswith(_SCRIPT_SCHEMES):
        return False
    return not (_SCRIPT_NOOP.match(url[:200]) or _DATA_IMAGE.match(url[:40]))


def _ipv4_number(label: str) -> int | None:
    """One part of an IPv4 host as browsers read it: decimal, 0x-hex or 0-octal."""
    try:
        if label[:2] in ("0x", "0X"):
            return int(label[2:] or "0", 16)
        if len(label) > 1 and label[0] == "0":
            return int(label, 8)
        return int(label, 10) if label.isdigit() else None
    except ValueError:
        return None


def ip_of_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a URL host names, or None for a domain name. Reads IPv6 literals and
    IPv4 as browsers do (1 to 4 dotted parts, each decimal, hex or octal: ``3232235777``,
    ``0xC0A80101``, ``0300.0250.1.1``)."""
    host = host.strip("[]").rstrip(".")
    if not host:
        return None
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    parts = host.split(".")
    if len(parts) > 4 or not all(parts):
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    value = values[-1]
    for i, n in enumerate(values[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _public_ip(host: str) -> bool:
    """True for a host that is an Internet address (not a private, loopback or reserved one,
    which no outside sender can serve a page from)."""
    if not host or not (host[-1].isdigit() or ":" in host or host[-1] in "xXabcdefABCDEF"):
        return False
    ip = ip_of_host(host)
    return ip is not None and ip.is_global


_IPFS_PATH = re.compile(r"/ip[fn]s/(?:qm[1-9a-z]{20}|baf[a-z2-7]{20})", re.I)


def lure_host(data: StructuralData, host: str, href: str) -> bool:
    """``host`` belongs to a free hosting, site builder, form builder, file drop or IPFS
    gateway in the rules' ``lure_hosts`` (or a listed path of a shared host)."""
    if ".ipfs." in host or ".ipns." in host or _IPFS_PATH.search(href[:300]):
        return True  # any IPFS gateway: content nobody hosts and nobody can take down
    labels = host.split(".")
    for i in range(len(labels) - 1):
        if ".".join(labels[i:]) in data.lure_hosts:
            return True
    if data.lure_paths:
        for lure_host, prefix in data.lure_paths:
            if host == lure_host:
                try:
                    path = urlsplit(href.strip()).path.lower()
                except ValueError:
                    return False
                if path.startswith(prefix):
                    return True
    return False


def check_link_structure(data: StructuralData, msg: Message) -> Iterator[Hit]:
    """Where links really lead: raw IP addresses, punycode names, pages on free hosting
    and form builders, links that run script; and links read out of QR codes."""
    done: set[str] = set()
    for link in msg.links:
        href = link.href
        if "script-link" not in done and _script_href(href):
            done.add("script-link")
            yield Hit("phishing.script-link", "links", href[:120])
            continue
        host = host_of(href)
        if not host:
            continue
        if "ip" not in done and "://" in href[:12] and _public_ip(host):
            done.add("ip")
            yield Hit("phishing.ip-host", "links", href[:120])
        if "puny" not in done and (
            "xn--" in host and any(label.startswith("xn--") for label in host.split("."))
        ):
            done.add("puny")
            yield Hit("phishing.punycode-host", "links", f"{href[:120]} ({unicode_host(host)})")
        if "lure" not in done and lure_host(data, host, href):
            done.add("lure")
            yield Hit("phishing.lure-host", "links", href[:120])
    for att in msg.attachments:
        if att.qr_codes and att.links and "qr" not in done:
            done.add("qr")
            yield Hit(
                "phishing.qr-link", "attachments", f"{att.filename}: {att.links[0].href[:120]}"
            )


def check_calendar(data: StructuralData, msg: Message) -> Iterator[Hit]:
    """A calendar invite whose text links to a domain that is neither the sender's nor a
    meeting service's."""
    sender_org = org_domain(msg.from_.domain) if msg.from_ is not None else ""
    for att in msg.attachments:
        if not att.calendar:
            continue
        for link in att.links:
            host = host_of(link.href)
            if not host:
                continue
            org = org_domain(host)
            if org != sender_org and org not in data.meeting_hosts:
                yield Hit("phishing.ics-link", "attachments", f"{att.filename}: {link.href[:120]}")
                return


def _extensions(filename: str) -> list[str]:
    name = _BIDI.sub("", filename).strip().lower().rstrip(". ")
    return name.split(".")[1:]


def _dangerous_page(traits: tuple[str, ...]) -> bool:
    """An attached page that asks for a password, sends the reader elsewhere, or hides
    its own script (the usual shapes of a phishing page sent as a file)."""
    return "password" in traits or "redirect" in traits or "obfuscated" in traits


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
        if _dangerous_page(att.html_traits):
            traits = ", ".join(att.html_traits)
            yield Hit("phishing.html-form-attachment", "attachments", f"{shown}: {traits}")
        if att.encrypted:
            yield Hit("phishing.encrypted-archive", "attachments", shown)


def run_checks(data: StructuralData, msg: Message) -> list[Hit]:
    """All structural hits for ``msg`` (the caller decides which ones count)."""
    hits: list[Hit] = []
    hits.extend(check_sender(data, msg))
    hits.extend(check_auth(msg))
    hits.extend(check_reply_to(data, msg))
    hits.extend(check_links(data, msg))
    hits.extend(check_link_structure(data, msg))
    hits.extend(check_calendar(data, msg))
    hits.extend(check_attachments(data, msg))
    return hits
