"""The freelancer's stance in a reply: does a message they sent decline a request to leave
the platform, agree to it, or neither?

Only the new text counts (quoted history and forwarded tails are split off the way the
judge does it, ``judge.segments``), and only its first ``MAX_STANCE_CHARS`` characters.
It is normalised once, cut into sentences (``concepts.windows``) and each sentence is read
with one RE2 set that holds the engine's own concepts for the ways off the platform
(``messenger``, ``pay_instrument``, ``outside``, ``contact_move``, ``handle`` ...) and the
stance concepts of ``stance.toml`` (a refusal, keeping things on the platform, its terms,
consent). What the sentences hold decides:

- **decline**: a refusal next to a way off the platform ("I can't move to WhatsApp"), a
  restatement that work, talk or payment stays on the platform ("let's keep everything on
  Upwork", "let's keep it here"), the platform's terms next to either or "against the
  terms", or a bare "no" opening a reply whose quoted text holds the request; a refusal
  the segmenter cut off as a signature (the short lines after "Thanks!") still counts;
- **agree**: a handle or payment detail given (the engine's verdict counts an off-platform
  category, or a handle sits next to a way off the platform, or is called one's own, with
  no refusal), or consent, an invitation or a proposal next to a way off the platform and
  an act of moving or paying ("ok, add me on WhatsApp", "sure, pay me by PayPal", "drop
  me a WhatsApp"), an off-platform verdict with no refusal at all, or a "yes" opening a
  reply to a quoted request that goes on to act on it;
- when a reply both declines and consents, the later statement is taken (people give the
  reason first and the answer last); a handle given always makes it an agreement.

Pure and linear in the text: every pattern is RE2, the text is bounded.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import re2

from guard.mail import Message
from guard.policy.concepts import ConceptSet, compile_concepts, windows
from guard.policy.engine import text_categories
from guard.policy.judge import segments
from guard.policy.model import Verdict
from guard.policy.normalize import normalise_info
from guard.policy.rules import RuleSet
from guard.policy.terms import TermCompiler

DECLINE, AGREE, NEUTRAL = "decline", "agree", "neutral"

# The new text read (a reply's answer is at its top; a huge one is not a stance anyway).
MAX_STANCE_CHARS = 5_000
OFF_PLATFORM = frozenset({"off_platform_payment", "off_platform_contact"})

# The engine's concepts (concepts.toml) read next to the stance concepts (stance.toml).
_ENGINE_CONCEPTS = (
    "messenger", "pay_instrument", "outside", "contact_move", "handle", "your_contact",
    "platform", "on_platform", "pay_action", "cheque", "end_contract",
)  # fmt: skip
# A way off the platform (what consent or a handle must stand next to).
_TOOLS = frozenset({"messenger", "pay_instrument", "outside", "s_off"})
# What a refusal is about: a way off named as such, moving there, one's own details, a
# cheque ("directly" alone is left out: "we never edit production directly").
_OBJECTS = frozenset(
    {
        "messenger",
        "pay_instrument",
        "s_off",
        "contact_move",
        "your_contact",
        "s_my_contact",
        "cheque",
    }
)
# Moving, paying, giving a detail, inviting contact, closing the contract.
_ACTS = frozenset({"contact_move", "pay_action", "handle", "s_my_contact", "s_move"})
_PLATFORM = frozenset({"platform", "on_platform"})
_SHORT_SENTENCE = 80  # "Unfortunately I can't." refers to the sentence before it
_OPENING_SENTENCES = 2  # where a bare "no" answers the quoted request

# Phrases that look like a refusal but say yes or nothing ("no problem", "don't worry",
# "pas de souci", "kein Problem"): read as "ok" or blanked before the sentences are read.
_AS_CONSENT = re2.compile(
    r"\b(?:no (?:problem|prob|worries|issue)s?|not a problem|don'?t worry|don'?t mind|"
    r"(?:if you )?(?:do not|don'?t) mind|why not|no hay (?:problema|drama)|no te preocupes|"
    r"no se preocupe|por qu[eé] no|n[aã]o (?:tem|h[aá]) problema|n[aã]o se preocupe|"
    r"por que n[aã]o|pas de (?:probl[eè]me|souci|soucis)|aucun (?:probl[eè]me|souci)|"
    r"pourquoi pas|ne (?:vous|t')?inqui[eé]t(?:ez|e) pas|kein problem|keine sorge|kein thema|"
    r"warum nicht|nessun problema|non (?:c'[eè]|preoccupar\w*)|perch[eé] no|geen probleem|"
    r"waarom niet)\b|"
    r"(?:без проблем|не проблема|(?:нет|het) проблем|не волнуйтесь|не беспокойтесь|"
    r"почему бы (?:и )?(?:нет|het))"
)
_BLANK = re2.compile(
    r"\b(?:mak(?:e|es|ing) sure|made sure|be sure|(?:i'?m|i am|we'?re|we are) sure|"
    r"can'?t wait|won'?t take long|don'?t hesitate|do not hesitate|"
    r"never mind|not only|not just|no later than|no more than|not yet|n'h[eé]sitez pas|"
    r"h[eé]sitez pas|nicht nur|nicht vergessen|z[oö]gern sie nicht|no dudes|n[aã]o hesite|"
    r"non esitare|niet alleen)\b|(?:не стесняйтесь|не только|не забудьте)"
)
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Sentences:
    """The concepts found in each sentence of a text, in order, and the sentences' lengths."""

    found: tuple[frozenset[str], ...]
    lengths: tuple[int, ...]

    def near(self, i: int, names: frozenset[str]) -> bool:
        """True when sentence ``i`` or one next to it holds one of ``names``."""
        lo, hi = max(0, i - 1), min(len(self.found), i + 2)
        return any(not names.isdisjoint(self.found[j]) for j in range(lo, hi))

    def has(self, names: frozenset[str]) -> bool:
        return any(not names.isdisjoint(f) for f in self.found)

    def any_with(self, name: str, lo: int = 0, hi: int | None = None) -> bool:
        return any(name in f for f in self.found[lo:hi])


@lru_cache(maxsize=1)
def stance_concepts() -> ConceptSet:
    """The stance concepts and the engine concepts they are read with, in one RE2 set
    (compiled once)."""
    files = resources.files("guard.policy")

    def doc(name: str) -> dict[str, Any]:
        return tomllib.loads(files.joinpath(name).read_text(encoding="utf-8"))

    rules, concepts, stance = doc("rules.toml"), doc("concepts.toml"), doc("stance.toml")
    lexicon = {
        **rules.get("lexicon", {}),
        **concepts.get("lexicon", {}),
        **stance.get("lexicon", {}),
    }
    chosen = {name: concepts["concepts"][name] for name in _ENGINE_CONCEPTS}
    chosen.update(stance["concepts"])
    return compile_concepts({"concepts": chosen}, TermCompiler(lexicon, "stance").term, "stance")


def _read(cs: ConceptSet, text: str) -> _Sentences:
    """Normalise ``text`` (already bounded) and find the concepts of each sentence."""
    norm, _ = normalise_info(text)
    norm = _BLANK.sub(" ", _AS_CONSENT.sub(" ok ", norm))
    if not norm.strip():
        return _Sentences((), ())
    data: str | bytes = norm.encode("ascii") if norm.isascii() else norm
    names = cs.names
    found: list[frozenset[str]] = []
    lengths: list[int] = []
    for start, end in windows(norm):
        hits = cs.match(data[start:end])
        found.append(frozenset(names[i] for i in hits) if hits else _EMPTY)
        lengths.append(end - start)
    return _Sentences(tuple(found), tuple(lengths))


def _parts(msg: Message) -> tuple[str, str, str]:
    """The new text, the quoted history and the signature, each bounded."""
    plain, html = segments(msg)
    new = plain.new if plain.new.strip() else html.new
    quoted = plain.quoted if plain.quoted.strip() else html.quoted
    signature = plain.signature if plain.new.strip() else html.signature
    return new[:MAX_STANCE_CHARS], quoted[:MAX_STANCE_CHARS], signature[:MAX_STANCE_CHARS]


def _refused_after_a_closing(cs: ConceptSet, signature: str) -> bool:
    """A short reply under a "Thanks!" line is cut off as a signature by the segmenter: an
    explicit refusal there still counts (a restatement does not: taglines such as "all
    payments via Upwork" live in signatures)."""
    if not signature.strip():
        return False
    s = _read(cs, signature)
    return any(
        _refuses_a_way_off(s, i) or not {"s_keep_here", "s_against"}.isdisjoint(found)
        for i, found in enumerate(s.found)
    )


def _refuses_a_way_off(s: _Sentences, i: int) -> bool:
    """Sentence ``i`` refuses something off the platform: the refusal and its object in
    one sentence, or a short refusal after the sentence that names the object."""
    found = s.found[i]
    if "s_refuse" not in found:
        return False
    if not _OBJECTS.isdisjoint(found):
        return True
    return i > 0 and s.lengths[i] <= _SHORT_SENTENCE and not _OBJECTS.isdisjoint(s.found[i - 1])


def _declines(s: _Sentences, quoted_request: bool) -> list[int]:
    """The sentences that decline (see the module docstring)."""
    out = []
    for i, found in enumerate(s.found):
        if (
            _refuses_a_way_off(s, i)
            or "s_against" in found
            or "s_keep_here" in found
            or ("s_keep" in found and s.near(i, _PLATFORM))
            or ("s_keep_weak" in found and not _PLATFORM.isdisjoint(found))
            or ("s_terms" in found and s.near(i, _OBJECTS | {"s_refuse", "s_keep"}))
            or (quoted_request and i < _OPENING_SENTENCES and "s_refuse_bare" in found)
        ):
            out.append(i)
    return out


def _gives_handle(s: _Sentences, off_verdict: bool) -> bool:
    """A handle or payment detail given, in a sentence that refuses nothing: the verdict
    saw one, or it stands next to a way off the platform or is called one's own ("my cell
    is ...")."""
    for i, found in enumerate(s.found):
        if "handle" not in found or "s_refuse" in found:
            continue
        if off_verdict or s.near(i, _TOOLS) or "s_my_contact" in found:
            return True
    return False


def _says_yes(s: _Sentences) -> list[int]:
    """Sentences that say yes to a way off the platform (consent, an invitation or a
    proposal next to a way off and an act of moving or paying), refusing nothing."""
    out = []
    for i, found in enumerate(s.found):
        if found.isdisjoint({"s_consent", "s_move", "s_propose"}):
            continue
        if not s.near(i, _TOOLS) or not s.near(i, _ACTS):
            continue
        lo, hi = max(0, i - 1), min(len(s.found), i + 2)
        if not s.any_with("s_refuse", lo, hi):
            out.append(i)
    return out


def _quoted_request(rules: RuleSet, cs: ConceptSet, quoted: str) -> bool:
    """The quoted history holds a request to leave the platform."""
    if not quoted.strip():
        return False
    return _read(cs, quoted).has(_TOOLS) or bool(OFF_PLATFORM & text_categories(rules, quoted))


def reply_stance(rules: RuleSet, msg: Message, verdict: Verdict) -> str:
    """For a message the freelancer SENT (from the Sent folder): whether its new text
    declines a request to leave the platform (refuses off-platform payment or contact,
    restates that work and payment stay on the platform, points to the terms), agrees to
    it (gives a phone/WhatsApp/Telegram/Skype handle, a PayPal/bank/crypto address, or says
    yes to moving), or neither: DECLINE, AGREE or NEUTRAL. ``verdict`` is the engine's
    verdict on that same message (an off-platform category means its new text shows a
    handle or payment detail)."""
    cs = stance_concepts()
    new, quoted, signature = _parts(msg)
    s = _read(cs, new)
    off_verdict = not OFF_PLATFORM.isdisjoint(verdict.categories)
    if _gives_handle(s, off_verdict):
        return AGREE
    yes = _says_yes(s)
    if off_verdict and yes:
        return AGREE  # the engine saw the move, and the writer says yes to it
    answers_quote = (
        s.any_with("s_refuse_bare", 0, _OPENING_SENTENCES)
        or s.any_with("s_consent", 0, _OPENING_SENTENCES)
    ) and _quoted_request(rules, cs, quoted)
    declines = _declines(s, answers_quote)
    if declines and yes:
        return AGREE if yes[-1] > declines[-1] else DECLINE
    if declines:
        return DECLINE
    if yes:
        return AGREE
    refuses = s.any_with("s_refuse")
    if off_verdict and not refuses:
        return AGREE
    if (
        answers_quote
        and s.any_with("s_consent", 0, _OPENING_SENTENCES)
        and not refuses
        and s.has(_ACTS | _TOOLS | {"end_contract"})
    ):
        return AGREE  # "yes, that's fine: set me up" under the quoted request
    if _refused_after_a_closing(cs, signature):
        return DECLINE
    return NEUTRAL
