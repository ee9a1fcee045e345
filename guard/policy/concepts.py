"""Concepts: what a sentence talks about, in any of the languages the guard reads.

A concept is a named list of terms in the rule language (see ``rules.toml``), for example
``pay_instrument`` (PayPal, a bank transfer, USDT, "the blue P app"), ``outside`` (directly,
off the platform, "por fuera"), ``ask`` (send me, what's your, "пришлите"). Concepts come
from ``concepts.toml`` and may use every lexicon list of the rules. A message's new text is
normalised once and every concept is found with one RE2 set pass over it. Only when two
concepts occur that can form a pair with a learned score is the text read again, window by
window (a window is a sentence, or a piece of a long one), with the same set: the windows
are what pairs are made of, and one set searched window by window costs far less than one
search per concept (each concept's own automaton would be read from memory again).

Categories are not decided here: the engine turns concepts that occur together in one
sentence or two adjacent ones into features ("pay_instrument+outside"), whose weight per
category is learned from labelled mail (``weights.toml``, made by ``make train``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import re2

from guard.policy.rx import spans
from guard.policy.terms import TermCompiler

_MARKS = (". ", "! ", "? ", "; ", "。", "！", "？", "；", "؟ ", " - ", " • ", " · ")
# A sentence longer than this is read as pieces of at most this many characters: concepts
# pair within one window or two adjacent ones, so at most 2 * WINDOW characters apart.
WINDOW = 240
# A concept is placed in at most this many windows (bounds the pairing work on long mail).
MAX_WINDOWS_PER_CONCEPT = 32


@dataclass(frozen=True, slots=True)
class Concept:
    name: str
    description: str
    atom: int  # index in ConceptSet.patterns


def _options(max_mem: int) -> Any:
    options = re2.Options()
    options.max_mem = max_mem
    options.never_capture = True  # spans only: RE2 can answer with its DFAs alone
    return options


@dataclass(slots=True)
class ConceptSet:
    """Compiled concepts. ``atom_set`` is an RE2 set in which concept ``i`` is pattern
    ``base + i``: the concepts' own set (base 0), or the rule engine's set of every rule
    atom and concept (``load_rules``), so that one pass over a field answers both. Each
    concept's own pattern (needed only to show evidence) is compiled on first use."""

    concepts: tuple[Concept, ...]
    patterns: list[str]
    atom_set: Any = None
    base: int = 0
    compiled: dict[tuple[int, bool], Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.concepts)

    def match(self, data: bytes | str) -> list[int]:
        """The concepts (indices into ``concepts``) that occur in ``data``."""
        base = self.base
        found = self.atom_set.Match(data) or ()
        return [i - base for i in found if i >= base] if base else list(found)

    def atom(self, index: int, ascii: bool) -> Any:
        """Concept ``index``'s pattern, compiled for bytes when ``ascii`` (ASCII text is
        searched as bytes, whose offsets need no conversion back to characters)."""
        compiled = self.compiled.get((index, ascii))
        if compiled is None:
            pattern = self.patterns[index]
            compiled = re2.compile(
                pattern.encode("utf-8") if ascii else pattern, _options(64 << 20)
            )
            self.compiled[(index, ascii)] = compiled
        return compiled


@dataclass(frozen=True, slots=True)
class ConceptHit:
    concept: str
    start: int
    end: int
    window: int  # index of the window (sentence or piece of one); -1: not placed


def compile_concepts(
    doc: dict[str, Any], term: Any, origin: str = "concepts", own_set: bool = True
) -> ConceptSet:
    """Compile ``doc["concepts"]`` with ``term`` (the rule compiler's term translator).
    Without ``own_set`` the caller adds ``patterns`` to a set of its own and fills in
    ``atom_set`` and ``base``."""
    concepts: list[Concept] = []
    patterns: list[str] = []
    check = re2.Set.SearchSet(_options(64 << 20))  # parses each pattern, names the bad one
    for name, raw in sorted(doc.get("concepts", {}).items()):
        terms = raw.get("terms", [])
        if not isinstance(terms, list) or not terms:
            raise ValueError(f"{origin}: concept {name}: needs a non-empty list 'terms'")
        pattern = "|".join(f"(?:{term(str(t))})" for t in terms)
        try:
            check.Add(pattern)
        except re2.error as exc:
            raise ValueError(f"{origin}: concept {name}: invalid pattern: {exc}") from None
        concepts.append(Concept(name, str(raw.get("description", "")), len(patterns)))
        patterns.append(pattern)
    cs = ConceptSet(tuple(concepts), patterns)
    if own_set:
        # Room for the set's DFA (see rules.SET_MAX_MEM).
        cs.atom_set = re2.Set.SearchSet(_options(256 << 20))
        for pattern in patterns:
            cs.atom_set.Add(pattern)
        if patterns:
            cs.atom_set.Compile()
    return cs


def sentence_starts(norm: str) -> list[int]:
    """Offsets in ``norm`` where each sentence starts (the first is 0): after ., !, ?, ;
    (or their CJK and Arabic forms) and a space, and after a dash or bullet between spaces
    (normalised text has no line breaks left). str.find runs in C: no regex pass."""
    starts = [0]
    for mark in _MARKS:
        i = norm.find(mark)
        while i >= 0:
            end = i + len(mark)
            if end < len(norm):
                starts.append(end)
            i = norm.find(mark, end)
    starts.sort()
    return starts


def find_concepts(
    cs: ConceptSet,
    norm: str,
    ascii: bytes | None = None,
    partners: Mapping[str, AbstractSet[str]] | None = None,
    present: Sequence[int] | None = None,
) -> list[ConceptHit]:
    """Every concept hit in normalised text ``norm``, in text order. ``ascii`` is ``norm``
    encoded when it is ASCII (searched as bytes: same offsets, no conversion).

    ``partners``, when given, says which pairs matter (those with a learned score): a
    concept that forms none of them with another concept present is listed once without
    a place (start and end -1), which saves looking for where it occurs. ``present``: the
    concepts already known to occur in ``norm`` (the rule engine's set pass found them)."""
    if not norm or not cs.concepts:
        return []
    if present is None:
        present = cs.match(ascii if ascii is not None else norm)
    if not present:
        return []
    if len(present) == 1:
        # One concept alone: no pair to place, and a concept alone never carries a
        # category (its score is at most 0), so its position is not needed.
        return [ConceptHit(cs.concepts[present[0]].name, -1, -1, -1)]
    placed = None
    if partners is not None:
        names = {cs.concepts[i].name for i in present}
        placed = {n for n in names if not names.isdisjoint(partners.get(n, ()))}
        if not placed:
            return [ConceptHit(cs.concepts[i].name, -1, -1, -1) for i in present]
    hits = [
        ConceptHit(cs.concepts[i].name, -1, -1, -1)
        for i in present
        if placed is not None and cs.concepts[i].name not in placed
    ]
    data = ascii if ascii is not None else norm
    match = cs.match
    count: dict[str, int] = {}
    for number, (start, end) in enumerate(windows(norm)):
        for index in match(data[start:end]):
            name = cs.concepts[index].name
            if placed is not None and name not in placed:
                continue
            seen = count[name] = count.get(name, 0) + 1
            if seen <= MAX_WINDOWS_PER_CONCEPT:
                hits.append(ConceptHit(name, start, end, number))
    # A term cut by a window's edge is in the text but in no window: still listed.
    hits.extend(
        ConceptHit(cs.concepts[i].name, -1, -1, -1)
        for i in present
        if cs.concepts[i].name not in count and (placed is None or cs.concepts[i].name in placed)
    )
    hits.sort(key=lambda h: (h.start, h.concept))
    return hits


def windows(norm: str) -> list[tuple[int, int]]:
    """The sentences of ``norm`` as (start, end), a sentence longer than WINDOW cut at
    spaces into pieces of at most WINDOW characters (a run-on text without punctuation
    still pairs only what is close)."""
    out: list[tuple[int, int]] = []
    starts = sentence_starts(norm)
    starts.append(len(norm))
    for start, end in pairwise(starts):
        while end - start > WINDOW:
            cut = norm.rfind(" ", start + WINDOW // 2, start + WINDOW)
            cut = start + WINDOW if cut < 0 else cut + 1
            out.append((start, cut))
            start = cut
        if end > start:
            out.append((start, end))
    return out


def locate(
    cs: ConceptSet, feature: str, norm: str, ascii: bytes | None, where: tuple[int, int]
) -> tuple[int, int]:
    """The span of ``norm`` that shows ``feature`` (a concept, or two joined by "+"): from
    the first term of the first concept to the end of the other's first term, searched
    inside ``where`` (the windows the hits recorded; (-1, -1): the whole text)."""
    lo, hi = where if where[0] >= 0 else (0, len(norm))
    data = (ascii if ascii is not None else norm)[lo:hi]
    found: list[tuple[int, int]] = []
    by_name = {c.name: c for c in cs.concepts}
    for name in feature.split("+"):
        concept = by_name.get(name)
        if concept is None:
            continue
        found.extend(spans(cs.atom(concept.atom, ascii is not None), data, 1))
    if not found:
        return lo, hi
    return lo + min(s for s, _ in found), lo + max(e for _, e in found)


def pair_name(a: str, b: str) -> str:
    return "+".join(sorted((a, b)))


def concept_pairs(hits: list[ConceptHit]) -> dict[str, tuple[int, int]]:
    """Features from hits: each concept alone, and each pair of different concepts that
    occur in one window or two adjacent ones (see :func:`windows`).

    ``hits`` must be in text order, as :func:`find_concepts` returns them. Returns feature
    name -> (start, end) of the first place it occurs (for the evidence).
    """
    out: dict[str, tuple[int, int]] = {}
    for h in hits:
        out.setdefault(h.concept, (h.start, h.end))
    # Hits are in text order (and so in window order): the partners of a hit are the
    # hits after it, up to the first one too far away.
    for i, x in enumerate(hits):
        if x.start < 0:
            continue  # listed without a place: pairs with nothing
        for y in hits[i + 1 :]:
            if y.window - x.window > 1:
                break
            if x.concept == y.concept:
                continue
            name = pair_name(x.concept, y.concept)
            if name not in out:
                out[name] = (x.start, max(x.end, y.end))
    return out


def load_builtin(extra_concepts: str | None = None) -> ConceptSet:
    """The built-in concepts, compiled with the built-in rules' lexicon (for tools and
    tests; the engine compiles them together with the rules in ``load_rules``).
    ``extra_concepts`` is TOML text read instead of the shipped ``concepts.toml``."""
    import tomllib
    from importlib import resources

    files = resources.files("guard.policy")
    rules = tomllib.loads(files.joinpath("rules.toml").read_text(encoding="utf-8"))
    text = extra_concepts
    if text is None:
        text = files.joinpath("concepts.toml").read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    lexicon = {**rules.get("lexicon", {}), **doc.get("lexicon", {})}
    compiler = TermCompiler(lexicon, "concepts")
    return compile_concepts(doc, compiler.term)


def detect(cs: ConceptSet, text: str) -> set[str]:
    """The names of the concepts that occur in ``text`` (normalised here first)."""
    from guard.policy.normalize import normalise_info

    norm, _ = normalise_info(text)
    return {h.concept for h in find_concepts(cs, norm)}
