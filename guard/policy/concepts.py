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

import re
from bisect import bisect_right
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import re2

# A sentence ends at ., !, ?, ; or their CJK/Arabic forms followed by a space, or at a
# run of dashes/bullets (normalised text has no line breaks left).
_SENTENCE_END = re.compile(r"[.!?;。！？；؟](?:\s+|$)|\s[-•·]{1,3}\s")
# Concepts further apart than this many characters never pair, even in adjacent sentences.
PAIR_SPAN = 320
MAX_HITS_PER_CONCEPT = 16


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

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.concepts)


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
    return ConceptSet(tuple(concepts), atoms, atom_set)


def sentence_starts(norm: str) -> list[int]:
    """Offsets in ``norm`` where each sentence starts (the first is 0)."""
    starts = [0]
    for m in _SENTENCE_END.finditer(norm):
        if m.end() < len(norm):
            starts.append(m.end())
    return starts


def find_concepts(cs: ConceptSet, norm: str) -> list[ConceptHit]:
    """Every concept hit in normalised text ``norm``, in text order."""
    if not norm or not cs.concepts:
        return []
    present = cs.atom_set.Match(norm) or ()
    if not present:
        return []
    starts = sentence_starts(norm)
    hits: list[ConceptHit] = []
    for index in present:
        concept = cs.concepts[index]
        count = 0
        for m in cs.atoms[concept.atom].finditer(norm):
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
