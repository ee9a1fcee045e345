"""Brand impersonation: a message that claims to come from a well-known sender (a bank, a
courier, a mail provider, a tax office ...) that did not send it, and asks for something.

The claim is read where a reader sees it: the sender's display name first, then the
subject, then the head of the text. A claim alone is not phishing (a colleague mentions
their bank, a shop's receipt names the card it was paid with); what makes it phishing is the
claim by a sender outside the brand's own domains *together with* a lure: one of the lure
concepts of ``concepts.toml`` (verify your account, a payment problem, storage full, a
parcel fee, a tax refund, a reward or gift card to claim, a token give-away, a document
waiting) or, for a display name, a link to a third site (neither the brand's nor the
sender's own). A claim read only in the subject or the text needs both the lure and a link
away from the brand.

Checks yield :class:`~guard.policy.structural.Hit` records like the structural checks; the
rules file owns their scores and explanations. The evidence names the brand claimed and the
domain that really sent the message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass

from guard.mail import Message
from guard.policy.brands import Brand, Catalogue
from guard.policy.domains import host_of, is_domain_like, org_domain
from guard.policy.structural import Hit, StructuralData, lure_host

# Concepts that carry the lure of a credential, payment or reward phishing message.
LURE_CONCEPTS = frozenset(
    {
        "verify_account",
        "payment_problem",
        "storage_full",
        "delivery_fee",
        "tax_refund",
        "reward_claim",
        "gift_card",
        "crypto_giveaway",
        "document_share",
    }
)
_MENTION_LURES_EXCLUDED = frozenset({"gift_card"})
_BODY_HEAD = 1_500  # a claim in the text counts in its first lines only
_MAX_LINKS = 200
_MAX_HOST = 253  # the longest a DNS name can be: anything longer is not a host


@dataclass(frozen=True, slots=True)
class Claim:
    brand: Brand
    where: str  # "from", "subject" or "body"


def claimed_brand(catalogue: Catalogue, msg: Message, *, text: bool = True) -> Claim | None:
    """The brand the message says it comes from, and where it says so (or None).
    ``text``: read the subject and the first lines too, not only the display name."""
    sender = msg.from_
    if sender is not None and sender.name:
        brand = catalogue.named(sender.name, display_name=True)
        if brand is not None:
            return Claim(brand, "from")
    if not text:
        return None
    if msg.subject:
        brand = catalogue.named(msg.subject, display_name=False)
        if brand is not None:
            return Claim(brand, "subject")
    body = msg.body[:_BODY_HEAD]
    if body:
        brand = catalogue.named(body, display_name=False)
        if brand is not None:
            return Claim(brand, "body")
    return None


def _sent_by(catalogue: Catalogue, brand: Brand, msg: Message) -> bool:
    """The brand (or its mail service) really sent it: From on one of its domains, or a
    passing DKIM signature of one of them."""
    if msg.from_ is not None and catalogue.official(brand, msg.from_.domain):
        return True
    return msg.auth.dkim == "pass" and any(
        catalogue.official(brand, d) for d in msg.auth.dkim_domains
    )


def _link_hosts(msg: Message) -> Iterator[str]:
    """Where the message's links lead: the host of each web link and the domain of each
    mailto: address (writing back to another domain leads away as much as a link does)."""
    for link in msg.links[:_MAX_LINKS]:
        href = link.href.strip()
        lowered = href[:12].lower()
        if lowered.startswith("mailto:"):
            address = href[7:].split("?", 1)[0].split(",", 1)[0]
            host = address.rpartition("@")[2].strip().lower() if "@" in address else ""
            if not is_domain_like(host):
                continue  # not an address anyone can write to: nothing to name
        elif lowered.startswith(("http://", "https://", "www.")):
            host = host_of(href)
        else:
            continue
        if host and len(host) <= _MAX_HOST:
            yield host


def _away_link(
    catalogue: Catalogue, brand: Brand, msg: Message, sender_org: str, *, own: bool
) -> str:
    """The first link that leads neither to the brand nor to another well-known brand's
    site (a social profile, an app store). ``own``: a link to the sender's own domain
    counts too (it is not the brand's either)."""
    for host in _link_hosts(msg):
        if catalogue.official(brand, host) or catalogue.brand_of_domain(host):
            continue
        if not own and org_domain(host) == sender_org:
            continue
        return host
    return ""


def check_impersonation(catalogue: Catalogue, msg: Message, lures: Set[str]) -> Iterator[Hit]:
    """``lures``: the lure concepts found in the message's new text and subject."""
    domain = msg.from_.domain.lower() if msg.from_ is not None else ""
    # A claim in the subject or text counts only in personal mail with a lure (see below):
    # without one, the text is not read for brand names at all.
    text_lure = not msg.is_bulk and bool(
        LURE_CONCEPTS.intersection(lures) - _MENTION_LURES_EXCLUDED
    )
    claim = claimed_brand(catalogue, msg, text=text_lure)
    if claim is None or _sent_by(catalogue, claim.brand, msg):
        return
    sender_org = org_domain(domain) if domain else ""
    if claim.where != "from" and catalogue.brand_of_domain(sender_org) is not None:
        # A well-known sender's own mail that names another brand (a shop's receipt that
        # names the card, a bank's notice naming a courier) is not an impersonation.
        return
    lure = sorted(LURE_CONCEPTS.intersection(lures))
    if claim.where == "from":
        # The name on the envelope is the claim: a lure, or a link to a third site (not the
        # brand's, not the sender's own), makes it an impersonation.
        away = _away_link(catalogue, claim.brand, msg, sender_org, own=bool(lure))
        if not lure and not away:
            return
    else:
        # A brand named in the subject or text is often just a mention: a newsletter about
        # scams, a client naming the marketplace, a gift card offered in passing. It counts
        # only in personal mail, for a brand that is not the conversation's marketplace, with
        # an account, payment or parcel lure (not a gift card) and a link away from it.
        if msg.is_bulk or claim.brand.platform:
            return
        lure = [c for c in lure if c not in _MENTION_LURES_EXCLUDED]
        away = _away_link(catalogue, claim.brand, msg, sender_org, own=True)
        if not (lure and away):
            return
    name = claim.brand.names[0] if claim.brand.names else claim.brand.key
    said = {"from": "the sender's name", "subject": "the subject", "body": "the text"}
    evidence = (
        f"{said[claim.where]} claims {name}; sent from {domain or 'an address with no domain'}"
    )
    if away:
        evidence += f"; its link goes to {away}"
    if lure:
        evidence += f"; it talks of: {', '.join(c.replace('_', ' ') for c in lure)}"
    yield Hit("phishing.brand-impersonation", claim.where, evidence)


def _third_site(catalogue: Catalogue, msg: Message, sender_org: str) -> str:
    """The first link to a site that is neither the sender's nor a known brand's."""
    for host in _link_hosts(msg):
        if org_domain(host) != sender_org and catalogue.brand_of_domain(host) is None:
            return host
    return ""


# Structural signs that, next to a lure and a link to a third site, show the link is the
# point of the message even without an explicit call to click.
_CORROBORATING = frozenset(
    {
        "phishing.url-shortener",
        "phishing.lure-host",
        "phishing.ip-host",
        "phishing.punycode-host",
        "phishing.qr-link",
        "phishing.link-text-mismatch",
        "phishing.reply-to-mismatch",
        "phishing.spf-fail",
        "phishing.spf-softfail",
        "phishing.dkim-fail",
        "phishing.dmarc-fail",
    }
)


def check_lure_link(
    data: StructuralData, msg: Message, concepts: Set[str], hits: Sequence[Hit] = ()
) -> Iterator[Hit]:
    """A lure with no brand claimed: the text holds a lure (account, payment, parcel, tax,
    reward, tokens, a document) and its link leads to a third site, with a call to click or
    another sign of deceit among the structural ``hits`` (a shortener, free hosting, a
    failed authentication ...); or the lure comes from an address on free hosting (where
    anyone can send from)."""
    # A gift card alone is talk of payment (the scam category judges it), not a lure here.
    lure = sorted(LURE_CONCEPTS.intersection(concepts) - _MENTION_LURES_EXCLUDED)
    if not lure:
        return
    domain = msg.from_.domain.lower() if msg.from_ is not None else ""
    sender_org = org_domain(domain) if domain else ""
    if sender_org and data.catalogue.brand_of_domain(sender_org) is not None:
        return  # a well-known sender's own mail
    talks = ", ".join(c.replace("_", " ") for c in lure)
    if domain and lure_host(data, domain, ""):
        yield Hit("phishing.lure-link", "from", f"{talks}; sent from {domain}")
        return
    # In a conversation (the message answers another one) a call to click a link is
    # ordinary work ("verify the account flow on staging, click here"): there the lure
    # counts only with a sign of deceit.
    conversation = bool(msg.in_reply_to or msg.references)
    clicked = "click_link" in concepts and not conversation
    if clicked or any(h.check in _CORROBORATING for h in hits):
        third = _third_site(data.catalogue, msg, sender_org)
        if third:
            yield Hit("phishing.lure-link", "links", f"{talks}; the link goes to {third}")


_PRESSING = frozenset({"urgency", "threat", "click_link"})


def check_address_in_subject(msg: Message, concepts: Set[str]) -> Iterator[Hit]:
    """The recipient's own address written into the subject ("jane@example.com, your
    reward is waiting"), with a lure, pressure or a call to click: mail merged from an
    address list, not written to a person."""
    subject = (msg.subject or "").lower()
    if "@" not in subject or not (LURE_CONCEPTS | _PRESSING).intersection(concepts):
        return
    for rcpt in (*msg.to, *msg.cc):
        addr = rcpt.addr.lower()
        if addr and "@" in addr and addr in subject:
            yield Hit("phishing.address-in-subject", "subject", f"the subject holds {addr}")
            return
