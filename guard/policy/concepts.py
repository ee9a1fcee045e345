"""Concepts: what a sentence talks about, in any of the languages the guard reads.

A concept is a named list of terms in the rule language (see ``rules.toml``), for example
``pay_instrument`` (PayPal, a bank transfer, USDT, "the blue P app"), ``outside`` (directly,
off the platform, "por fuera"), ``ask`` (send me, what's your, "пришлите"). Concepts come
from ``concepts.toml`` and may use every lexicon list of the rules. A message's new text is
normalised once, every concept is found with one RE2 set pass plus one search per concept
that occurs, and each hit is placed in its sentence.

Categories are not decided here: the engine turns concepts that occur together in one
sentence or two adjacent ones into features ("pay_instrument+outside"), whose weight per
category is learned from labelled mail (``weights.toml``, made by ``make train``).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import re2

_MARKS = (". ", "! ", "? ", "; ", "。", "！", "？", "；", "؟ ", " - ", " • ", " · ")
# Concepts further apart than this many characters never pair, even in adjacent sentences.
PAIR_SPAN = 320
MAX_HITS_PER_CONCEPT = 8


@dataclass(frozen=True, slots=True)
class Concept:
    name: str
    description: str
    atom: int  # index in ConceptSet.atoms


@dataclass(slots=True)
class ConceptSet:
    concepts: tuple[Concept, ...]
    atoms: list[Any]
    atom_set: Any  # re2 Set over every concept's pattern, in the order of ``concepts``
    patterns: list[str] = field(default_factory=list)
    ascii_atoms: dict[int, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.concepts)

    def ascii_atom(self, atom: int) -> Any:
        """The concept's pattern compiled for bytes: ASCII text is searched as bytes, whose
        offsets need no conversion back to characters (as in the rule engine)."""
        compiled = self.ascii_atoms.get(atom)
        if compiled is None:
            compiled = re2.compile(self.patterns[atom].encode("utf-8"), self.atoms[atom].options)
            self.ascii_atoms[atom] = compiled
        return compiled


@dataclass(frozen=True, slots=True)
class ConceptHit:
    concept: str
    start: int
    end: int
    sentence: int


def compile_concepts(doc: dict[str, Any], term: Any, origin: str = "concepts") -> ConceptSet:
    """Compile ``doc["concepts"]`` with ``term`` (the rule compiler's term translator)."""
    options = re2.Options()
    options.max_mem = 64 << 20
    concepts: list[Concept] = []
    atoms: list[Any] = []
    patterns: list[str] = []
    for name, raw in sorted(doc.get("concepts", {}).items()):
        terms = raw.get("terms", [])
        if not isinstance(terms, list) or not terms:
            raise ValueError(f"{origin}: concept {name}: needs a non-empty list 'terms'")
        pattern = "|".join(f"(?:{term(str(t))})" for t in terms)
        try:
            compiled = re2.compile(pattern, options)
        except re2.error as exc:
            raise ValueError(f"{origin}: concept {name}: invalid pattern: {exc}") from None
        concepts.append(Concept(name, str(raw.get("description", "")), len(atoms)))
        atoms.append(compiled)
        patterns.append(pattern)
    atom_set = re2.Set.SearchSet(options)
    for pattern in patterns:
        atom_set.Add(pattern)
    if patterns:
        atom_set.Compile()
    return ConceptSet(tuple(concepts), atoms, atom_set, patterns)


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


def find_concepts(cs: ConceptSet, norm: str, ascii: bytes | None = None) -> list[ConceptHit]:
    """Every concept hit in normalised text ``norm``, in text order. ``ascii`` is ``norm``
    encoded when it is ASCII (searched as bytes: same offsets, no conversion)."""
    if not norm or not cs.concepts:
        return []
    present = cs.atom_set.Match(ascii if ascii is not None else norm) or ()
    if not present:
        return []
    if len(present) == 1:
        # One concept alone: no pair to place, and a concept alone never carries a
        # category (its score is at most 0), so its position is not needed.
        concept = cs.concepts[present[0]]
        return [ConceptHit(concept.name, 0, 0, 0)]
    starts = sentence_starts(norm)
    hits: list[ConceptHit] = []
    for index in present:
        concept = cs.concepts[index]
        count = 0
        if ascii is not None:
            found = cs.ascii_atom(concept.atom).finditer(ascii)
        else:
            found = cs.atoms[concept.atom].finditer(norm)
        for m in found:
            if m.end() == m.start():
                continue
            hits.append(
                ConceptHit(concept.name, m.start(), m.end(), bisect_right(starts, m.start()) - 1)
            )
            count += 1
            if count >= MAX_HITS_PER_CONCEPT:
                break
    hits.sort(key=lambda h: (h.start, h.concept))
    return hits


def pair_name(a: str, b: str) -> str:
    return "+".join(sorted((a, b)))


def concept_pairs(hits: list[ConceptHit]) -> dict[str, tuple[int, int]]:
    """Features from hits: each concept alone, and each pair of different concepts that
    occur in one sentence or two adjacent ones (at most PAIR_SPAN characters apart).

    Returns feature name -> (start, end) of the first place it occurs (for the evidence).
    """
    out: dict[str, tuple[int, int]] = {}
    for h in hits:
        out.setdefault(h.concept, (h.start, h.end))
    for x, y in combinations(hits, 2):
        if x.concept == y.concept or abs(x.sentence - y.sentence) > 1:
            continue
        if abs(y.start - x.start) > PAIR_SPAN:
            continue
        name = pair_name(x.concept, y.concept)
        if name not in out:
            out[name] = (min(x.start, y.start), max(x.end, y.end))
    return out


def load_builtin(extra_concepts: str | None = None) -> ConceptSet:
    """The built-in concepts, compiled with the built-in rules' lexicon (for tools and
    tests; the engine compiles them together with the rules in ``load_rules``).
    ``extra_concepts`` is TOML text read instead of the shipped ``concepts.toml``."""
    import tomllib
    from importlib import resources

    from guard.policy.engine import _Compiler

    files = resources.files("guard.policy")
    rules = tomllib.loads(files.joinpath("rules.toml").read_text(encoding="utf-8"))
    text = extra_concepts
    if text is None:
        text = files.joinpath("concepts.toml").read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    lexicon = {**rules.get("lexicon", {}), **doc.get("lexicon", {})}
    compiler = _Compiler(lexicon, "concepts")
    return compile_concepts(doc, compiler.term)


def detect(cs: ConceptSet, text: str) -> set[str]:
    """The names of the concepts that occur in ``text`` (normalised here first)."""
    from guard.policy.normalize import normalise_info

    norm, _ = normalise_info(text)
    return {h.concept for h in find_concepts(cs, norm)}
