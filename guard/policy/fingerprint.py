"""Fuzzy fingerprints of a message's text, to recognise a later message of the same campaign.

A campaign sends the same text to many people with other greetings, names, amounts, links
and signatures. :func:`fingerprint` normalises those away and keeps a bottom-k MinHash
sketch of the word shingles of what is left, so :func:`similarity` can estimate the Jaccard
similarity of two texts from their fingerprints alone. A :class:`Fingerprint` is a short
ASCII string in a store (:meth:`Fingerprint.to_text`).

Normalisation, in order: the head of the text only (``MAX_CHARS``); Unicode NFKC; e-mail
addresses, URLs and bare domains, dates, phone numbers and every word holding a digit
replaced by placeholders; greeting lines (or the greeting at the head of a line) and
sign-off lines with the short signature under them dropped; personal names reduced
(every capitalised word that does not start a sentence becomes a placeholder: names, but
also brands and, in German, nouns, the same way in every copy of a campaign); case folded;
punctuation and whitespace collapsed, and a run of one placeholder kept once.

Pure standard library; deterministic across processes (blake2b, not ``hash``). Work is
linear in the (bounded) text; every pattern is anchored or bounded.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import struct
import unicodedata
from dataclasses import dataclass

VERSION = "fp1"
MAX_CHARS = 20_000
"""Only the head of a longer text is read."""
SHINGLE = 4
"""Words per shingle."""
SKETCH = 64
"""Minimum hashes kept (bottom-k MinHash)."""
MIN_SHINGLES = 8
"""A text with fewer distinct shingles is too short to compare: it never matches."""
SIMILAR = 0.5
"""Estimated Jaccard similarity from which two texts count as the same campaign."""

_MAX_HASH = 2**32 - 1

# Placeholders: NFKC maps every circled letter to a plain one, so none of these can remain
# in a normalised text and be mistaken for a placeholder.
_URL, _EMAIL, _PHONE, _NUM, _NAME = "ⓤ", "ⓔ", "ⓟ", "ⓝ", "ⓧ"
_PLACEHOLDERS = frozenset((_URL, _EMAIL, _PHONE, _NUM, _NAME))

_EMAIL_RX = re.compile(r"(?<![\w.+'-])[\w.+'-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
_TLDS = (
    r"com|net|org|info|biz|io|co|app|dev|xyz|top|online|site|shop|store|link|click|live|"
    r"me|ly|gl|cc|ai|tv|us|uk|de|fr|es|it|pt|br|ru|nl|eu|ca|au|in|ch|at|be|mx|ar|cl|pl"
)
_SCHEME_RX = re.compile(r"(?:(?:https?|ftp)://|www\.)[^\s<>\"']{1,2000}")
# Bare domains are found by their top-level domain (a fast literal scan), then widened.
_DOT_TLD_RX = re.compile(rf"\.(?:{_TLDS})\b")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_MAX_HOST = 253
_URL_END = frozenset(" \t\n<>\"'")
_MAX_PATH = 2000
_DATE_RX = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}")
_PHONE_RX = re.compile(r"(?<!\w)\+?\(?\d[\d \t().-]{5,20}\d(?!\w)")

_GREETING = (
    # en
    r"hi|hello|hey|hiya|dear|greetings|good\s+(?:morning|afternoon|evening|day)"
    r"|to\s+whom\s+it\s+may\s+concern"
    # es / pt
    r"|hola|estimad[oa]s?|querid[oa]s?|buen[oa]s?\s+(?:d[ií]as|tardes|noches)|saludos"
    r"|ol[aá]|oi|prezad[oa]s?|car[oa]s?|bom\s+dia|boa\s+(?:tarde|noite)"
    # fr
    r"|bonjour|bonsoir|salut|cher|ch[eè]re|chers|ch[eè]res"
    # de
    r"|hallo|moin|servus|liebe[rs]?|sehr\s+geehrte[rs]?|guten\s+(?:tag|morgen|abend)"
    # it
    r"|ciao|salve|gentile|gentil(?:issim[oa])?|egregi[oa]|buongiorno|buonasera"
    # ru
    r"|привет|здравствуйте|здравствуй|добрый\s+(?:день|вечер)|доброе\s+утро"
    r"|уважаем(?:ый|ая|ые)|дорог(?:ой|ая|ие)"
)
# Who is greeted besides capitalised words (names): titles and collective addressees.
_ADDRESSEE_WORDS = (
    "mr mrs ms miss dr prof sr sra srta sir madam m mme mlle herr frau sig sig.ra signora "
    "signor all team there everyone folks guys friend friends todos todas equipe equipo "
    "tous zusammen tutti все коллеги господин госпожа and und y e et и"
)
_ADDRESSEES = frozenset(_ADDRESSEE_WORDS.split())
_GREETING_RX = re.compile(rf"\s*(?:{_GREETING})(?=[\s,.!:;]|$)[\s,.!:;]*", re.IGNORECASE)
_SIGNOFF = (
    r"(?:best|kind|warm|warmest|many)?\s*regards|best|best\s+wishes|all\s+the\s+best"
    r"|thanks|thank\s+you|many\s+thanks|thanks\s+in\s+advance|thx|cheers|sincerely"
    r"|yours(?:\s+(?:truly|sincerely|faithfully))?|talk\s+soon|take\s+care"
    r"|saludos(?:\s+cordiales)?|un\s+saludo|atentamente|cordialmente|gracias|muchas\s+gracias"
    r"|abra[cç]os|atenciosamente|obrigad[oa]|um\s+abra[cç]o"
    r"|cordialement|bien\s+cordialement|bien\s+[aà]\s+vous|merci|amicalement|bisous"
    r"|mit\s+freundlichen\s+gr[üu](?:ß|ss)en|(?:viele|beste|liebe|freundliche)\s+gr[üu](?:ß|ss)e"
    r"|gru(?:ß|ss)|lg|mfg|danke|vielen\s+dank"
    r"|cordiali\s+saluti|distinti\s+saluti|saluti|un\s+saluto|grazie|a\s+presto"
    r"|с\s+уважением|спасибо|всего\s+доброго|с\s+наилучшими\s+пожеланиями|благодарю"
)
_SIGNOFF_RX = re.compile(rf"\s*(?:{_SIGNOFF})(?=[\s,.!]|$)[\s,.!]*", re.IGNORECASE)
_MAX_NAME_WORDS = 3
_MAX_ADDRESSEE_WORDS = 5
_MAX_SIGNATURE_LINES = 6
_GREETING_LINES = 3
_MAX_MARK_LINE = 200

# Placeholders; numbers with their separators ("1,500.00", "3/12"); words (a word holding
# a digit is a number: "10am", "ID4X7"); sentence ends.
_TOKEN_RX = re.compile(
    r"([ⓤⓔⓟⓝ])|(\d[\d.,:/-]*\d(?!\w))|([^\W\d_]+(?:['’][^\W\d_]+)*)(?!\w)|(\w+)|([.!?;]+)"
)
# Besides . ! ? ; a line break ends a sentence after the first line (the subject), after a
# blank line and after a line ending in one of these (a line break alone does not: the text
# may be wrapped anywhere).
_LINE_END_STOPS = frozenset(":")


@dataclass(frozen=True)
class Fingerprint:
    """A bottom-k MinHash sketch of a text's word shingles.

    ``shingles`` is the number of distinct shingles in the normalised text; ``mins`` the
    smallest of their 32-bit hashes, ascending (``min(shingles, SKETCH)`` of them)."""

    shingles: int
    mins: tuple[int, ...]

    @property
    def too_short(self) -> bool:
        return self.shingles < MIN_SHINGLES

    def to_text(self) -> str:
        """``fp1:<shingles>:<base64url of the big-endian 32-bit minimum hashes>``."""
        packed = struct.pack(f">{len(self.mins)}I", *self.mins)
        data = base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")
        return f"{VERSION}:{self.shingles}:{data}"

    @classmethod
    def from_text(cls, s: str) -> Fingerprint:
        """Parse :meth:`to_text` output; :class:`ValueError` (one line) when malformed."""
        if not isinstance(s, str):
            raise ValueError("fingerprint: not a string")
        parts = s.split(":")
        if len(parts) != 3 or parts[0] != VERSION:
            raise ValueError(f"fingerprint: expected '{VERSION}:<count>:<hashes>'")
        count, data = parts[1], parts[2]
        if not (count.isascii() and count.isdigit()) or len(count) > 9:
            raise ValueError("fingerprint: shingle count is not a small decimal number")
        shingles = int(count)
        if len(data) > 2 * SKETCH * 4 or not re.fullmatch(r"[A-Za-z0-9_-]*", data):
            raise ValueError("fingerprint: hashes are not base64url")
        try:
            packed = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        except ValueError:
            raise ValueError("fingerprint: hashes are not base64url") from None
        if len(packed) % 4:
            raise ValueError("fingerprint: hashes are not whole 32-bit values")
        mins = struct.unpack(f">{len(packed) // 4}I", packed)
        if len(mins) != min(shingles, SKETCH):
            raise ValueError("fingerprint: number of hashes does not match the shingle count")
        if any(a >= b for a, b in itertools.pairwise(mins)):
            raise ValueError("fingerprint: hashes are not strictly ascending")
        return cls(shingles, tuple(mins))


def _replace_codes(text: str) -> str:
    if "@" in text:
        text = _EMAIL_RX.sub(f" {_EMAIL} ", text)
    text = _replace_urls(text)
    return _PHONE_RX.sub(_phone, text)


def _replace_urls(text: str) -> str:
    """Links (with a scheme or ``www.``) and bare domains with a known top-level domain."""
    low = text.lower()
    if len(low) != len(text):  # a rare letter whose lower case is longer: go by ASCII only
        low = "".join(c.lower() if c.isascii() else "_" for c in text)
    links: list[tuple[int, int]] = []
    if "://" in low or "www." in low:
        links = [m.span() for m in _SCHEME_RX.finditer(low)]
    spans = list(links)
    j = 0
    covered = 0  # every character is scanned once: none before the end of the last domain
    for m in _DOT_TLD_RX.finditer(low):
        start, end = m.span()
        if start < covered:
            continue  # inside the last domain or its path
        while j < len(links) and links[j][1] <= start:
            j += 1
        if j < len(links) and links[j][0] <= start:
            continue  # inside a link
        left = start
        floor = max(covered, start - _MAX_HOST)
        while left > floor and low[left - 1] in _HOST_CHARS:
            left -= 1
        if left == start:
            continue  # ".com" alone
        if end < len(low) and low[end] == "/":
            limit = min(len(low), end + _MAX_PATH)
            while end < limit and low[end] not in _URL_END:
                end += 1
        spans.append((left, end))
        covered = end
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        if start < pos:
            start = pos
            if end <= start:
                continue
        out.append(text[pos:start])
        out.append(f" {_URL} ")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _phone(m: re.Match[str]) -> str:
    found = m.group()
    if sum(c.isdigit() for c in found) < 7:
        return found
    return f" {_NUM} " if _DATE_RX.fullmatch(found.strip()) else f" {_PHONE} "


def _is_signoff(line: str) -> bool:
    """A closing ("Best regards,", "Thanks, Anna", "Mit freundlichen Grüßen") alone on its
    line, with at most a short name after it."""
    if len(line) > _MAX_MARK_LINE:
        return False
    m = _SIGNOFF_RX.match(line)
    if not m:
        return False
    rest = line[m.end() :].strip(" \t,.!")
    words = rest.split()
    return len(words) <= _MAX_NAME_WORDS and all(_capitalised(w) or w.isupper() for w in words)


def _strip_greeting(line: str) -> str:
    """``line`` without a greeting at its head and whom it greets ("Hi Anna,", "Dear Mr. X",
    "Sehr geehrte Damen und Herren,"); the line as it was when it holds no greeting."""
    for _ in range(2):  # "Hello Anna, Dear Mrs. Smith"
        m = _GREETING_RX.match(line[:_MAX_MARK_LINE])
        if not m:
            return line
        line = line[_greeting_end(line, m.end()) :]
    return line


def _greeting_end(line: str, pos: int) -> int:
    """Where the addressees after a greeting that ends at ``pos`` end."""
    words = line[pos:].split(" ")
    for word in words[:_MAX_ADDRESSEE_WORDS]:
        bare = word.strip(",.!:;")
        if not bare or not (_capitalised(bare) or bare.isupper() or bare.casefold() in _ADDRESSEES):
            break
        pos += len(word) + 1
        if word[-1:] in (",", "!", ":", ";"):
            break
    return min(pos, len(line))


def _drop_greetings_and_signoffs(text: str) -> str:
    """Without the greeting in the first lines and the closing with the short signature
    under it in the last ones."""
    lines = text.split("\n")
    filled = [i for i, line in enumerate(lines) if line.strip()]
    head = set(filled[:_GREETING_LINES])
    tail = filled[-(_MAX_SIGNATURE_LINES + 1) :]
    end = len(lines)
    for i in tail:
        if i != filled[0] and _is_signoff(lines[i]):
            end = i  # the closing and the short signature under it
            break
    return "\n".join(
        _strip_greeting(line) if i in head else line for i, line in enumerate(lines[:end])
    )


def _tokens(text: str) -> list[str]:
    """Words and placeholders, names reduced, case folded, placeholder runs collapsed."""
    raw: list[tuple[str, bool]] = []  # (token, starts a sentence)
    start = True
    lines = text.split("\n")
    for n, line in enumerate(lines):
        for ph, num, word, other, stop in _TOKEN_RX.findall(line):
            if stop:
                start = True
                continue
            if ph:
                raw.append((ph, start))
            elif word:
                raw.append((word, start))
            elif num or other:  # a word holding a digit counts as a number
                raw.append((_NUM, start))
            start = False
        if n == 0 or not line.strip() or line.rstrip()[-1:] in _LINE_END_STOPS:
            start = (
                True  # after the first line (the subject), a blank line or a line ending in : or ,
            )
    out: list[str] = []
    for word, sentence_start in raw:
        word = _NAME if not sentence_start and _capitalised(word) else word.casefold()
        if word in _PLACEHOLDERS and out and out[-1] == word:
            continue
        out.append(word)
    return out


def _capitalised(word: str) -> bool:
    return len(word) > 1 and word[0].isupper() and not word.isupper() and word[1] not in "'’"


def normalise(text: str) -> list[str]:
    """The normalised words of ``text`` that the fingerprint is made of."""
    text = unicodedata.normalize("NFKC", text[:MAX_CHARS])
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("’", "'")
    text = _replace_codes(text)
    text = _drop_greetings_and_signoffs(text)
    return _tokens(text)


def _hash(shingle: str) -> int:
    digest = hashlib.blake2b(shingle.encode("utf-8"), digest_size=4, person=b"guard-fp1")
    return int.from_bytes(digest.digest(), "big")


def fingerprint(text: str) -> Fingerprint:
    """The fuzzy fingerprint of a message's new text (subject and new body)."""
    words = normalise(text)
    shingles = {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}
    hashes = sorted({_hash(s) for s in shingles})
    return Fingerprint(len(shingles), tuple(hashes[:SKETCH]))


def similarity(a: Fingerprint, b: Fingerprint) -> float:
    """Estimated Jaccard similarity of the two texts' shingle sets, 0..1; 0 when either
    is too short to compare."""
    if a.too_short or b.too_short:
        return 0.0
    sa, sb = set(a.mins), set(b.mins)
    union = sorted(sa | sb)[:SKETCH]
    if not union:
        return 0.0
    both = sum(1 for h in union if h in sa and h in sb)
    return both / len(union)
