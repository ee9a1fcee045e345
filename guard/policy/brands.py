"""The brand catalogue: who a message claims to be, and which hosts imitate whom.

``brands.toml`` lists the senders phishing borrows (banks, payment providers, mail and cloud
providers, couriers, shops, tax offices, social networks, crypto wallets, the freelance
marketplaces...). Each brand has display ``names`` and the registrable ``domains`` it really
sends mail from and links to; ``shared`` domains are the brand's own but open to anyone
(free mail addresses, user-hosted pages: ``gmail.com``, ``onmicrosoft.com``), so they neither
prove the brand nor look like it. :class:`Catalogue` answers four questions with indexes whose
cost does not grow with the number of brands:

* :meth:`Catalogue.named` - the brand a display name, subject or text claims;
* :meth:`Catalogue.official` - whether a domain or host is the brand's own;
* :meth:`Catalogue.lookalike` - the brand a host's registrable name imitates;
* :meth:`Catalogue.subdomain_brand` - the brand spelled in a host's left labels.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.policy.domains import (
    edit_distance,
    is_domain_like,
    org_domain,
    skeleton,
    unicode_host,
)
from guard.policy.model import RulesError, read_toml

BUILTIN_PATH = Path(__file__).with_name("brands.toml")

FAMILIES = frozenset(
    {
        "bank", "payment", "mail_cloud", "courier", "streaming", "retail", "government",
        "esign", "social", "crypto", "telecom", "platform", "other",
    }
)  # fmt: skip

_FIELDS = frozenset(
    {"names", "domains", "shared", "patterns", "family", "country", "platform", "generic"}
)


@dataclass(frozen=True, slots=True)
class Brand:
    """A sender whose name scammers borrow (field order matches structural.Brand)."""

    key: str
    names: tuple[str, ...]
    domains: tuple[str, ...]
    platform: bool = False
    generic: bool = False  # the name is an ordinary word or a person's name
    family: str = "other"
    country: str = ""
    shared: tuple[str, ...] = ()  # the brand's domains anyone can send from or host on
    patterns: tuple[str, ...] = ()  # glob patterns on registrable domains (sparkasse-*.de)


# --- text folding ---------------------------------------------------------------------------

# Small capitals, Cyrillic and Greek letters drawn like Latin ones, after NFKC and casefold.
_CONFUSABLES = str.maketrans(
    {
        "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h",
        "ɪ": "i", "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p",
        "ꞯ": "q", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y",
        "ᴢ": "z", "ı": "i", "ɡ": "g", "ɑ": "a",
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i",
        "ј": "j", "ԁ": "d", "һ": "h", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɩ": "i",
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
        "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
        "\u200b": "", "\u200c": "", "\u200d": "", "\u2060": "", "\ufeff": "", "\u00ad": "",
        "\u034f": "", "\u180e": "",
        "’": "'", "‘": "'", "`": "'", "＆": "&",
    }
)  # fmt: skip
# Trade marks, emoji and other symbols: NFKC would turn "™" into letters ("Ledger™").
_SYMBOLS = re.compile("[\u2120\u00a9\u00ae\u2122\u2600-\u27bf\ufe0f\U0001f000-\U0001faff]")
_DIGITS = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b"})
_MIXED_WORD = re.compile(r"[a-z0-9]*[0-9][a-z0-9]*")
_SPACES = re.compile(r"\s+")
# Letters spread out by separators: "p a y p a l", "ᴘ.ᴀ.ʏ.ᴘ.ᴀ.ʟ", "P-a-y-P-a-l".
_SPREAD = re.compile(r"(?<![^\W_])[^\W_](?:[\s.\-_*·•|~,+]{1,3}[^\W_](?![^\W_])){2,}")
_SPREAD_SEP = re.compile(r"[\s.\-_*·•|~,+]")
_WORD = re.compile(r"[^\W_]+")

HEAD_CHARS = 4096  # longer text is read only at its head
_DISPLAY_CHARS = 256


def _fold_digits(match: re.Match[str]) -> str:
    word = match.group()
    return word.translate(_DIGITS) if any(c.isalpha() for c in word) else word


def fold(text: str) -> str:
    """NFKC, case, small capitals and look-alike letters folded; digits inside words read as
    the letters they imitate ("amaz0n" → "amazon"); runs of spaces collapsed."""
    text = unicodedata.normalize("NFKC", _SYMBOLS.sub(" ", text)).casefold().translate(_CONFUSABLES)
    # Marks NFKC could not compose into a letter ("p̲a̲y̲", "ρ́") only decorate: drop them.
    # Composed letters stay ("über" is not "uber").
    if not text.isascii():
        text = "".join(c for c in text if not unicodedata.combining(c))
    text = _MIXED_WORD.sub(_fold_digits, text)
    return _SPACES.sub(" ", text).strip()


def _unspread(text: str) -> str:
    return _SPREAD.sub(lambda m: _SPREAD_SEP.sub("", m.group()), text)


# Words that may stand next to a generic brand name in a display name that is the brand
# itself ("Chase Bank", "Apple Support", "Orange Service Client", "Amazon.com").
_SERVICE_TEXT = """
    support service services team customer customers client clients care help helpdesk desk
    center centre security secure account accounts billing notification notifications notice
    alert alerts info information noreply no reply do not donotreply mail email e online
    official bank banking card cards credit pay payment payments id verification verify
    inc ltd llc plc sa ag gmbh corp corporation co com net org group the of de du des la le
    el los las il lo di da do dos das der die das und and us usa uk gb de fr es it nl pt br
    eu ca au in mx ie be at ch pl assistance assistenza servizio clienti
    cliente clientes atencion atención soporte suporte atendimento kundenservice kundendienst
    kundenbetreuung klantenservice servicio serviço servico klant kunden store shop
    administrator admin webmaster dept department system systems update updates message
    messages delivery deliveries shipping express parcel parcels tracking mobile prime plus
    package packages shipment shipments paket pakket colis paquete encomenda encomendas pacco
    post versand
    wallet app apps digital business premium members member rewards privacy legal
"""
SERVICE_WORDS = frozenset(_SERVICE_TEXT.split())


# --- index helpers --------------------------------------------------------------------------


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex alternation for ``words`` as a trie (greedy: the longest name wins)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        end = "" in node
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if end:
            return "(?:" + body + ")?"
        return body

    return build(trie)


def _target(name: str) -> str:
    """A name as it can appear inside a host label: letters and digits, skeleton-folded."""
    return skeleton(re.sub(r"[^a-z0-9]", "", fold(name)))


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


_BAD_HOST = re.compile(r"[\s/@:]")  # not a host name: a parser's leftover
_MIN_EXACT = 4  # a host token equal to a brand name this long
_MIN_CONTAINED = 6  # a brand name this long inside a host token
_MIN_EDIT = 6  # one edit away from a brand name this long


class Catalogue:
    """The loaded brands with their indexes; immutable once built."""

    def __init__(self, brands: Iterable[Brand]) -> None:
        self.brands: tuple[Brand, ...] = tuple(brands)
        self.by_key: dict[str, Brand] = {b.key: b for b in self.brands}
        self._domain: dict[str, Brand] = {}
        self._shared: dict[str, Brand] = {}
        self._patterns: list[tuple[str, Brand]] = []
        self._name: dict[str, Brand] = {}
        exact: dict[str, Brand] = {}
        deletions: dict[str, set[str]] = {}
        for brand in self.brands:
            for domain in brand.domains:
                self._domain.setdefault(domain, brand)
            for domain in brand.shared:
                self._shared.setdefault(domain, brand)
            self._patterns.extend((p, brand) for p in brand.patterns)
            for name in brand.names:
                for variant in _name_variants(name):
                    self._name.setdefault(variant, brand)
                if brand.generic:
                    continue
                target = _target(name)
                if len(target) >= _MIN_EXACT:
                    exact.setdefault(target, brand)
                if len(target) >= _MIN_EDIT:
                    for d in {target, *_deletions(target)}:
                        deletions.setdefault(d, set()).add(target)
        self.official_orgs: frozenset[str] = frozenset(self._domain)
        self._exact = exact
        self._deletion_index = deletions
        self._contained_lengths = sorted({len(t) for t in exact if len(t) >= _MIN_CONTAINED})
        body = _trie_pattern(sorted(self._name))
        self._pattern = re.compile(rf"(?<![a-z0-9]){body}(?![a-z0-9])") if body else None
        self._lookalike = functools.lru_cache(maxsize=8192)(self._find_lookalike)
        # Senders, hosts and display names repeat from message to message: remember them.
        self._of_domain = functools.lru_cache(maxsize=8192)(self._find_brand_of_domain)
        self._display = functools.lru_cache(maxsize=4096)(self._find_named_display)
        self._subdomain = functools.lru_cache(maxsize=8192)(self._find_subdomain_brand)

    def __len__(self) -> int:
        return len(self.brands)

    # --- domains ----------------------------------------------------------------------------

    def _walk(self, host: str, table: Mapping[str, Brand]) -> Brand | None:
        """The brand listing ``host`` or one of its parent domains in ``table``."""
        labels = host.strip().strip(".").lower().split(".")
        for i in range(max(0, len(labels) - 6), len(labels) - 1):
            brand = table.get(".".join(labels[i:]))
            if brand is not None:
                return brand
        return None

    def brand_of_domain(self, domain_or_host: str) -> Brand | None:
        """The brand whose official domain ``domain_or_host`` is or lies under, or None."""
        return self._of_domain(domain_or_host)

    def _find_brand_of_domain(self, domain_or_host: str) -> Brand | None:
        host = domain_or_host.strip().strip(".").lower()
        if not host:
            return None
        brand = self._walk(host, self._domain)
        if brand is None and self._patterns:
            org = org_domain(host)
            for pattern, candidate in self._patterns:
                if fnmatch.fnmatchcase(org, pattern):
                    return candidate
        return brand

    def official(self, brand: Brand, domain_or_host: str) -> bool:
        """``domain_or_host`` is ``brand``'s own (its shared domains do not count)."""
        host = domain_or_host.strip().strip(".").lower()
        if not host:
            return False
        labels = host.split(".")
        own = set(brand.domains)
        if any(".".join(labels[i:]) in own for i in range(max(0, len(labels) - 6), len(labels))):
            return True
        org = org_domain(host)
        return any(fnmatch.fnmatchcase(org, p) for p in brand.patterns)

    def is_known(self, domain_or_host: str) -> bool:
        """An official or shared domain of some brand: never a look-alike."""
        host = domain_or_host.strip().strip(".").lower()
        return self.brand_of_domain(host) is not None or self._walk(host, self._shared) is not None

    # --- names ------------------------------------------------------------------------------

    def named(self, text: str, *, display_name: bool) -> Brand | None:
        """The brand ``text`` claims to be or to come from, or None.

        ``display_name``: the text is a From display name, where letters spread apart
        ("P a y P a l") count and a generic name (Chase, Apple, Orange) counts when it is the
        whole name or comes with service words only. Elsewhere (subject, body) generic names
        never count, and only the first :data:`HEAD_CHARS` characters are read.
        """
        if self._pattern is None or not text:
            return None
        if display_name:
            return self._display(text[:_DISPLAY_CHARS])
        return self._find_named(text, display_name=False)

    def _find_named_display(self, text: str) -> Brand | None:
        return self._find_named(text, display_name=True)

    def _find_named(self, text: str, *, display_name: bool) -> Brand | None:
        assert self._pattern is not None
        limit = _DISPLAY_CHARS if display_name else HEAD_CHARS
        folded = fold(text[:limit])
        variants = [folded]
        if display_name:
            spread = _unspread(folded)
            if spread != folded:
                variants.append(spread)
        for variant in variants:
            for m in self._pattern.finditer(variant):
                brand = self._name.get(m.group())
                if brand is None:
                    continue
                if not brand.generic:
                    return brand
                if display_name and _only_service_words(variant, m.start(), m.end(), brand):
                    return brand
        return None

    # --- hosts ------------------------------------------------------------------------------

    def lookalike(self, host: str) -> Brand | None:
        """The brand whose name ``host``'s registrable label imitates (``paypa1-secure.com``,
        ``xn--pypal-4ve.com``), or None. Official and shared domains never match, nor do
        generic brands."""
        host = host.strip().strip(".").lower()
        return self._lookalike(host) if host and not _BAD_HOST.search(host) else None

    def subdomain_brand(self, host: str) -> Brand | None:
        """The brand spelled in ``host``'s left labels ("paypal.com.account-check.example.ru",
        "login.microsoftonline.secure-id.top") when the registrable domain is not its own."""
        host = host.strip().strip(".").lower()
        return self._subdomain(host) if host and not _BAD_HOST.search(host) else None

    def _token_brand(self, token: str, *, edits: bool) -> Brand | None:
        sk = skeleton(token)
        if len(sk) < _MIN_EXACT:
            return None
        brand = self._exact.get(sk)
        if brand is not None:
            return brand
        for size in self._contained_lengths:
            if size >= len(sk):
                break
            for i in range(len(sk) - size + 1):
                brand = self._exact.get(sk[i : i + size])
                if brand is not None:
                    return brand
        if not edits or len(sk) < _MIN_EDIT - 1:
            return None
        candidates = set(self._deletion_index.get(sk, ()))
        for d in _deletions(sk):
            candidates.update(self._deletion_index.get(d, ()))
        for target in sorted(candidates):
            if len(sk) < len(target) and not _dropped_inside(sk, target):
                continue
            if edit_distance(sk, target, 1) <= 1:
                return self._exact[target]
        return None

    def _find_lookalike(self, host: str) -> Brand | None:
        if self.is_known(host):
            return None
        org = org_domain(host)
        label = unicode_host(org).split(".")[0]
        for token in _tokens(label):
            brand = self._token_brand(token, edits=True)
            if brand is not None:
                return brand
        return None

    def _find_subdomain_brand(self, host: str) -> Brand | None:
        # Shared domains (firebaseapp.com, onmicrosoft.com) are where such hosts live.
        if self.brand_of_domain(host) is not None:
            return None
        org = org_domain(host)
        if not host.endswith(org) or len(host) <= len(org):
            return None
        labels = unicode_host(host).split(".")
        left = labels[: len(labels) - len(org.split("."))]
        # An official domain spelled out: "paypal.com.x.ru", "chase.com-secure.ru".
        for i in range(len(left)):
            for j in (i + 2, i + 3):
                if j > len(labels):
                    break
                parts = labels[i:j]
                parts[-1] = parts[-1].split("-")[0]
                brand = self._domain.get(".".join(parts))
                if brand is not None:
                    return brand
        for label in left:
            for token in _tokens(label):
                brand = self._token_brand(token, edits=False)
                if brand is not None:
                    return brand
        return None


def _dropped_inside(token: str, target: str) -> bool:
    """``token`` is ``target`` less one inner letter ("paypl"), the name being long enough.

    A letter dropped from a six-letter name, or from either end, too often leaves a word
    ("trust" from truist, "fiver" from fiverr, "interest" from pinterest).
    """
    if len(target) <= _MIN_EDIT:
        return False
    return any(token == target[:i] + target[i + 1 :] for i in range(1, len(target) - 1))


def _tokens(label: str) -> list[str]:
    parts = [p for p in re.split(r"[-_]", label) if p]
    joined = "".join(parts)
    return [joined, *(p for p in parts if p != joined)]


def _name_variants(name: str) -> set[str]:
    folded = fold(name)
    out = {folded}
    if " " in folded:
        squeezed = folded.replace(" ", "")
        if len(squeezed) >= 8:
            out.add(squeezed)
        out.add(folded.replace(" ", "-"))
    return out


def _only_service_words(text: str, start: int, end: int, brand: Brand) -> bool:
    """Everything in ``text`` outside [start, end) is a service word or the brand's name."""
    own = {w for n in brand.names for w in _WORD.findall(fold(n))}
    rest = _WORD.findall(text[:start] + " " + text[end:])
    return all(w in SERVICE_WORDS or w in own for w in rest)


# --- loading --------------------------------------------------------------------------------


def _strings(raw: Any, where: str, field: str, *, domains: bool = False) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) and x.strip() for x in raw):
        raise RulesError(f"{where}: '{field}' must be a list of non-empty strings")
    out = tuple(x.strip().lower() for x in raw)
    if domains:
        for d in out:
            if not is_domain_like(d):
                raise RulesError(f"{where}: '{field}': '{d}' is not a domain name")
    return out


def parse_brands(doc: Mapping[str, Any], origin: str) -> list[Brand]:
    """Brands from a parsed brands document (``[brands.<key>]`` tables)."""
    unknown = set(doc) - {"brands"}
    if unknown:
        raise RulesError(f"brands file '{origin}': unknown section '{sorted(unknown)[0]}'")
    table = doc.get("brands", {})
    if not isinstance(table, dict):
        raise RulesError(f"brands file '{origin}': 'brands' must be a table")
    brands: list[Brand] = []
    names_seen: dict[str, str] = {}
    for key, raw in table.items():
        where = f"brands file '{origin}': brands.{key}"
        if not isinstance(raw, dict):
            raise RulesError(f"{where}: must be a table")
        extra = set(raw) - _FIELDS
        if extra:
            raise RulesError(f"{where}: unknown field '{sorted(extra)[0]}'")
        names = _strings(raw.get("names", [key]), where, "names")
        domains = _strings(raw.get("domains", []), where, "domains", domains=True)
        if not domains and not raw.get("patterns"):
            raise RulesError(f"{where}: 'domains' must list at least one domain")
        shared = _strings(raw.get("shared", []), where, "shared", domains=True)
        patterns = _strings(raw.get("patterns", []), where, "patterns")
        family = raw.get("family", "other")
        if family not in FAMILIES:
            raise RulesError(f"{where}: unknown family '{family}'")
        country = raw.get("country", "")
        if not isinstance(country, str):
            raise RulesError(f"{where}: 'country' must be a string")
        flags = {}
        for flag in ("platform", "generic"):
            value = raw.get(flag, False)
            if not isinstance(value, bool):
                raise RulesError(f"{where}: '{flag}' must be true or false")
            flags[flag] = value
        for name in names:
            for variant in _name_variants(name):
                other = names_seen.setdefault(variant, key)
                if other != key:
                    raise RulesError(f"{where}: name '{name}' is also a name of brands.{other}")
        brands.append(
            Brand(
                key=key,
                names=names,
                domains=domains,
                platform=flags["platform"],
                generic=flags["generic"],
                family=family,
                country=country.upper(),
                shared=shared,
                patterns=patterns,
            )
        )
    return brands


def load_brands(path: str | Path | None = None) -> Catalogue:
    """The catalogue in ``path`` (the built-in ``brands.toml`` when None, built once)."""
    if path is None:
        return _builtin()
    return Catalogue(parse_brands(read_toml("brands", Path(path)), str(path)))


@functools.cache
def _builtin() -> Catalogue:
    return Catalogue(parse_brands(read_toml("brands", BUILTIN_PATH), BUILTIN_PATH.name))
