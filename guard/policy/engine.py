"""Rule loading, compilation and evaluation.

Rules are data (``rules.toml`` in this package, plus user files). Every term of every rule
is compiled to RE2, which matches in linear time whatever the pattern, and all of them are
also put into one ``re2.Set`` so that a single pass over a field tells which terms occur
at all. Only rules whose terms all occur are then checked for position (the word window)
and cancelling phrases, so harmless mail costs one automaton pass per field.
"""

from __future__ import annotations

import re
import tomllib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any

import re2

from guard.mail.message import Message
from guard.policy.brands import Catalogue, load_brands, parse_brands
from guard.policy.concepts import ConceptSet, compile_concepts
from guard.policy.impersonation import (
    check_address_in_subject,
    check_impersonation,
    check_lure_link,
)
from guard.policy.model import (
    CATEGORIES,
    LEVELS,
    UNCHECKED_RULE,
    Finding,
    RulesError,
    Verdict,
    unchecked_finding,
)
from guard.policy.normalize import collapsed_offsets, normalise_info, normalise_tracked
from guard.policy.rx import spans as match_spans
from guard.policy.structural import (
    Hit,
    StructuralData,
    is_trusted_platform_sender,
    run_checks,
)

FIELDS = ("subject", "body", "attachments", "links", "from", "filenames")
DEFAULT_FIELDS = ("subject", "body", "attachments")
MAX_SCAN_CHARS = 200_000  # per text of a field; beyond it the beginning and end are scanned
MAX_SPANS = 64

# Letters and digits of the scripts the rules are written in. Small explicit ranges keep
# the automata small: a full Unicode \\pL class in every term would not fit in memory.
_W = r"a-z0-9\x{00df}-\x{024f}\x{0370}-\x{03ff}\x{0400}-\x{052f}"
_SEP = rf"[^{_W}]{{1,3}}"
_WORDCHAR = rf"[{_W}]"
_LEET = {
    "a": "a4@", "b": "b8", "e": "e3", "g": "g9", "i": "i1!|l", "l": "l1|i", "o": "o0",
    "s": "s5$", "t": "t7", "y": "y1i", "z": "z2",
}  # fmt: skip
_QUANTIFIER = re.compile(r"\d+(?:,\d*)?")
_START = itemgetter(0)
_END = itemgetter(1)


@dataclass(frozen=True, slots=True)
class TextRule:
    id: str
    category: str
    score: float
    fields: tuple[str, ...]
    groups: tuple[int, ...]
    window: int
    unless: tuple[int, ...]
    unless_window: int
    unless_near: tuple[int, ...]
    near_window: int
    requires: tuple[int, ...]
    group_set: frozenset[int]
    bulk: str
    trusted: str
    supporting: bool
    description: str
    explanation: str


@dataclass(frozen=True, slots=True)
class CheckSpec:
    id: str
    category: str
    score: float
    description: str
    explanation: str
    trusted: str = "skip"
    supporting: bool = False


@dataclass(slots=True)
class RuleSet:
    """Compiled rules: load with :func:`load_rules`, use with :func:`evaluate`."""

    text_rules: tuple[TextRule, ...]
    checks: dict[str, CheckSpec]
    levels: dict[str, float]
    bulk_factor: float
    atoms: list[Any]
    atom_sources: list[str]
    atom_set: Any
    structural: StructuralData
    sources: tuple[str, ...] = field(default=())
    by_atom: dict[int, tuple[int, ...]] = field(default_factory=dict)
    fields_used: frozenset[str] = frozenset()
    ascii_atoms: dict[int, Any] = field(default_factory=dict)
    user_scores: frozenset[str] = frozenset()  # ids whose score a user's [scores] table set
    # The concepts (concepts.toml), compiled with this lexicon. Their patterns are in
    # ``atom_set`` after the rule atoms (``concepts.base`` on), so a field's one set pass
    # tells which concepts it holds too.
    concepts: ConceptSet | None = None

    def concepts_in(self, matched: frozenset[int]) -> list[int]:
        """The concepts (indices into ``concepts.concepts``) in a field's ``matched``."""
        if self.concepts is None:
            return []
        base = self.concepts.base
        return sorted(i - base for i in matched if i >= base)

    def ascii_atom(self, atom: int) -> Any:
        """``atoms[atom]`` compiled for bytes, to search ASCII text encoded as bytes.

        Same RE2 program (str patterns are compiled from their UTF-8 bytes too), but the
        wrapper then reports byte offsets as they are instead of converting every match
        back to character offsets, which ASCII text does not need. Compiled on first use.
        """
        compiled = self.ascii_atoms.get(atom)
        if compiled is None:
            compiled = re2.compile(
                self.atom_sources[atom].encode("utf-8"), self.atoms[atom].options
            )
            self.ascii_atoms[atom] = compiled
        return compiled


# ---------------------------------------------------------------- term compilation


def _expand_obfuscated(word: str) -> str:
    """``paypal`` → a pattern that also matches ``p4yp4l``, ``pay pal``, ``pay-pal``."""
    parts = []
    for ch in word:
        if ch.isspace():
            continue
        cls = _LEET.get(ch, ch)
        parts.append(f"[{re2.escape(cls)}]" if len(cls) > 1 else re2.escape(ch))
    return r"[\s.\-_*']?".join(parts)


class _Compiler:
    def __init__(self, lexicon: Mapping[str, Sequence[str]], origin: str) -> None:
        self.lexicon = lexicon
        self.origin = origin
        self._cache: dict[str, str] = {}

    def lexicon_pattern(self, name: str, stack: tuple[str, ...] = ()) -> str:
        if name in self._cache:
            return self._cache[name]
        if name in stack:
            raise RulesError(f"{self.origin}: lexicon.{name}: refers to itself")
        if name not in self.lexicon:
            raise RulesError(f"{self.origin}: unknown lexicon name {{{name}}}")
        alternatives = [self.term_body(t, (*stack, name)) for t in self.lexicon[name]]
        pattern = "|".join(f"(?:{a})" for a in alternatives)
        self._cache[name] = pattern
        return pattern

    def term_body(self, term: str, stack: tuple[str, ...] = ()) -> str:
        """Translate one term of the rule language into RE2 syntax.

        Word boundaries are zero-width (``\\b``) and placed wherever a literal word starts
        or ends, so terms compose freely inside lexicons and groups.
        """
        if term.startswith("re:"):
            return term[3:]
        if term.startswith("~"):
            word = term[1:].lower()
            body = _expand_obfuscated(word)
            left = r"\b" if word[:1].isascii() and word[:1].isalnum() else ""
            right = r"\b" if word[-1:].isascii() and word[-1:].isalnum() else ""
            return f"{left}(?:{body}){right}"
        out: list[str] = []
        i = 0
        term = term.lower()
        n = len(term)
        while i < n:
            ch = term[i]
            if ch == "{":
                end = term.find("}", i)
                if end < 0:
                    raise RulesError(f"{self.origin}: unclosed '{{' in term {term!r}")
                inner = term[i + 1 : end]
                if _QUANTIFIER.fullmatch(inner):
                    out.append("{" + inner + "}")
                else:
                    out.append(f"(?:{self.lexicon_pattern(inner, stack)})")
                i = end + 1
                continue
            if ch == "\\" and i + 1 < n:
                nxt = term[i + 1]
                out.append(rf"[{_W}_']" if nxt == "w" else "\\" + nxt)
                i += 2
                continue
            if ch == "[":
                end = term.find("]", i + 1)
                if end < 0:
                    raise RulesError(f"{self.origin}: unclosed '[' in term {term!r}")
                if not out or term[i - 1] in " (|":
                    out.append(r"\b")
                out.append(term[i : end + 1])  # a character class, as in RE2
                i = end + 1
                continue
            if ch == " " and term[i + 1 : i + 2] == "?":
                # "cash ?app": the separator is optional ("cashapp", "cash app", "cash-app")
                out.append(f"(?:{_SEP})?")
                i += 2
                continue
            if ch == " ":
                out.append(_SEP)
            elif ch == "*":
                out.append(f"{_WORDCHAR}*")
            elif ch == "#":
                out.append(r"\d[\d,.]*")
            elif ch == "(":
                out.append("(?:")
            elif ch in ")|?+":
                out.append(ch)
            else:
                word_char = ch.isascii() and ch.isalnum()
                prev = term[i - 1] if i else ""
                nxt = term[i + 1] if i + 1 < n else ""
                if word_char and (not prev or prev in " (|}"):
                    out.append(r"\b")
                out.append(re2.escape(ch))
                glued = term[i + 1 : i + 3] == " ?"  # an optional separator follows
                if word_char and (not nxt or nxt in " )|{") and not glued:
                    out.append(r"\b")
            i += 1
        return "".join(out)

    def term(self, term: str) -> str:
        return self.term_body(term)


# ---------------------------------------------------------------- loading


def _read_toml(path: Path | None, text: str | None = None) -> dict[str, Any]:
    name = str(path) if path else "built-in rules"
    try:
        if text is None:
            assert path is not None
            text = path.read_text(encoding="utf-8")
        return tomllib.loads(text)
    except OSError as exc:
        raise RulesError(f"rules file '{name}': {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RulesError(f"rules file '{name}': not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"rules file '{name}': {exc}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any], origin: str) -> None:
    """Merge a user rules document into the built-in one (user wins, lexicons extend)."""
    known = {
        "levels", "settings", "lexicon", "rule", "check", "scores", "disabled", "structural",
        "brands",
    }  # fmt: skip
    for key in extra:
        if key not in known:
            raise RulesError(f"rules file '{origin}': unknown section '{key}'")
    base.setdefault("levels", {}).update(extra.get("levels", {}))
    base.setdefault("settings", {}).update(extra.get("settings", {}))
    for name, terms in extra.get("lexicon", {}).items():
        if not isinstance(terms, list):
            raise RulesError(f"rules file '{origin}': lexicon.{name}: must be a list of terms")
        base.setdefault("lexicon", {}).setdefault(name, [])
        base["lexicon"][name] = [*base["lexicon"][name], *terms]
    rules = {r.get("id"): r for r in base.get("rule", [])}
    for i, rule in enumerate(extra.get("rule", [])):
        if not isinstance(rule, dict) or "id" not in rule:
            raise RulesError(f"rules file '{origin}': rule[{i}]: missing 'id'")
        if rule["id"] in rules:
            rules[rule["id"]] = {**rules[rule["id"]], **rule}
        else:
            rules[rule["id"]] = {**rule, "_origin": origin}
    base["rule"] = list(rules.values())
    checks = {c.get("id"): c for c in base.get("check", [])}
    for i, check in enumerate(extra.get("check", [])):
        if not isinstance(check, dict) or check.get("id") not in checks:
            raise RulesError(f"rules file '{origin}': check[{i}]: unknown structural check id")
        checks[check["id"]] = {**checks[check["id"]], **check}
    base["check"] = list(checks.values())
    base.setdefault("scores", {}).update(extra.get("scores", {}))
    base["disabled"] = [*base.get("disabled", []), *extra.get("disabled", [])]
    for key, value in extra.get("structural", {}).items():
        base.setdefault("structural", {})[key] = [*base.get("structural", {}).get(key, []), *value]
    base.setdefault("brands", {}).update(extra.get("brands", {}))


def _number(doc: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(f"{where}.{key}: must be a number")
    return float(value)


def _str_list(doc: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = doc.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(f"{where}.{key}: must be a list of strings")
    return value


def _prose(doc: Mapping[str, Any], key: str) -> str:
    """A text from the rules file as one paragraph (TOML multi-line strings keep breaks)."""
    return " ".join(str(doc.get(key, "")).split())


# RE2 gives a compiled program ``max_mem`` bytes, program and lazily built DFA together.
# The set of every rule atom and concept is a large program: at 64 MiB its DFA had so
# little room that it was thrown away and rebuilt all the time on varied mail (10 ms per
# message on long real mail instead of 0.06 after warm-up). The budget is a ceiling, not
# an allocation: the states the guard's mail needs take a few MiB more than the program.
SET_MAX_MEM = 256 << 20


def _set_options() -> Any:
    options = re2.Options()
    options.max_mem = SET_MAX_MEM
    options.never_capture = True
    return options


class LazySet:
    """The RE2 set of every rule atom and concept, compiled on its first search.

    Compiling it takes most of ``load_rules``'s time (about half a second), which a
    command that judges no message (a poll with no new mail) need not pay. Each pattern
    was already parsed when the rules were loaded, so a bad one is reported there;
    :meth:`compile` does the rest ahead of time where that matters (``doctor``)."""

    __slots__ = ("_compiled", "_patterns")

    def __init__(self, patterns: list[str]) -> None:
        self._patterns = patterns
        self._compiled: Any = None

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def compile(self) -> Any:
        if self._compiled is None:
            built = re2.Set.SearchSet(_set_options())
            for pattern in self._patterns:
                built.Add(pattern)
            try:
                built.Compile()
            except re2.error:
                raise RulesError(
                    "rules: the combined pattern set is too large to compile"
                ) from None
            self._compiled = built
        return self._compiled

    def Match(self, data: bytes | str) -> Any:  # re2.Set's name: a drop-in for it
        return (self._compiled or self.compile()).Match(data)


def load_rules(extra: Iterable[Path | str] = ()) -> RuleSet:
    """Load the built-in rules plus user rule files (later files override earlier ones)."""
    builtin = resources.files("guard.policy").joinpath("rules.toml").read_text(encoding="utf-8")
    doc = _read_toml(None, builtin)
    sources = ["built-in"]
    for path in extra:
        path = Path(path)
        _merge(doc, _read_toml(path), str(path))
        sources.append(str(path))
    concepts = resources.files("guard.policy").joinpath("concepts.toml").read_text(encoding="utf-8")
    return _compile(doc, tuple(sources), _read_toml(None, concepts))


def _compile(
    doc: dict[str, Any], sources: tuple[str, ...], concept_doc: dict[str, Any] | None = None
) -> RuleSet:
    levels = {name: _number(doc.get("levels", {}), name, "levels") for name in LEVELS[1:]}
    if not levels["low"] <= levels["medium"] <= levels["high"]:
        raise RulesError("levels: thresholds must satisfy low <= medium <= high")
    settings = doc.get("settings", {})
    bulk_factor = _number(settings, "bulk_factor", "settings", 0.25)
    scores = doc.get("scores", {})
    disabled = set(doc.get("disabled", []))
    atoms: list[Any] = []
    atom_sources: list[str] = []
    atom_index: dict[str, int] = {}
    options = re2.Options()
    options.max_mem = 64 << 20
    options.never_capture = True  # spans only: RE2 can answer with its DFAs alone

    def atom(pattern: str, where: str) -> int:
        if pattern in atom_index:
            return atom_index[pattern]
        try:
            compiled = re2.compile(pattern, options)
        except re2.error as exc:
            raise RulesError(f"{where}: invalid pattern: {exc}") from None
        atom_index[pattern] = len(atoms)
        atoms.append(compiled)
        atom_sources.append(pattern)
        return atom_index[pattern]

    compiler = _Compiler(doc.get("lexicon", {}), "lexicon")
    rules: list[TextRule] = []
    seen_ids: set[str] = set()
    for i, raw in enumerate(doc.get("rule", [])):
        rid = raw.get("id", f"rule[{i}]")
        where = f"{raw.get('_origin', 'built-in rules')}: rule {rid}"
        if rid in seen_ids:
            raise RulesError(f"{where}: duplicate id")
        seen_ids.add(rid)
        if rid in disabled:
            continue
        category = raw.get("category")
        if category not in CATEGORIES:
            raise RulesError(f"{where}.category: must be one of {', '.join(CATEGORIES)}")
        fields = tuple(_str_list(raw, "fields", where)) or DEFAULT_FIELDS
        for f in fields:
            if f not in FIELDS:
                raise RulesError(f"{where}.fields: unknown field {f!r}")
        terms = _str_list(raw, "all", where)
        if not terms:
            raise RulesError(f"{where}.all: needs at least one term")
        compiler.origin = where
        try:
            groups = tuple(atom(compiler.term(t), f"{where}.all") for t in terms)
            unless = tuple(
                atom(compiler.term(t), f"{where}.unless") for t in _str_list(raw, "unless", where)
            )
            unless_near = tuple(
                atom(compiler.term(t), f"{where}.unless_near")
                for t in _str_list(raw, "unless_near", where)
            )
            requires = tuple(
                atom(compiler.term(t), f"{where}.requires")
                for t in _str_list(raw, "requires", where)
            )
        except RecursionError:
            raise RulesError(f"{where}: lexicon nesting too deep") from None
        window = int(_number(raw, "window", where, 30))
        score = float(scores.get(rid, _number(raw, "score", where)))
        rules.append(
            TextRule(
                id=rid,
                category=category,
                score=score,
                fields=fields,
                groups=groups,
                window=window,
                unless=unless,
                unless_window=int(_number(raw, "unless_window", where, window)),
                unless_near=unless_near,
                near_window=int(_number(raw, "near_window", where, 4)),
                requires=requires,
                group_set=frozenset(groups),
                bulk=str(raw.get("bulk", "dampen")),
                trusted=str(raw.get("trusted", "keep")),
                supporting=bool(raw.get("supporting", False)),
                description=str(raw.get("description", "")),
                explanation=_prose(raw, "explanation"),
            )
        )
    checks: dict[str, CheckSpec] = {}
    for raw in doc.get("check", []):
        cid = raw["id"]
        if cid in disabled:
            continue
        where = f"check {cid}"
        checks[cid] = CheckSpec(
            id=cid,
            category=raw.get("category", "phishing"),
            score=float(scores.get(cid, _number(raw, "score", where))),
            description=str(raw.get("description", "")),
            explanation=_prose(raw, "explanation"),
            trusted=str(raw.get("trusted", "skip")),
            supporting=bool(raw.get("supporting", False)),
        )
    set_patterns = list(atom_sources)
    concepts = None
    if concept_doc is not None:
        lexicon = {**doc.get("lexicon", {}), **concept_doc.get("lexicon", {})}
        try:
            concepts = compile_concepts(
                concept_doc, _Compiler(lexicon, "concepts").term, own_set=False
            )
        except ValueError as exc:
            raise RulesError(str(exc)) from None
        concepts.base = len(set_patterns)
        set_patterns.extend(concepts.patterns)
    atom_set = LazySet(set_patterns)
    if concepts is not None:
        concepts.atom_set = atom_set
    by_atom: dict[int, list[int]] = {}
    for index, rule in enumerate(rules):
        for group in rule.group_set:
            by_atom.setdefault(group, []).append(index)
    return RuleSet(
        by_atom={a: tuple(r) for a, r in by_atom.items()},
        fields_used=frozenset(f for rule in rules for f in rule.fields),
        text_rules=tuple(rules),
        checks=checks,
        levels=levels,
        bulk_factor=bulk_factor,
        atoms=atoms,
        atom_sources=atom_sources,
        atom_set=atom_set,
        structural=_structural(doc),
        sources=sources,
        user_scores=frozenset(scores),
        concepts=concepts,
    )


def _structural(doc: Mapping[str, Any]) -> StructuralData:
    s = doc.get("structural", {})
    # The built-in catalogue (brands.toml), with the [brands.*] of user rule files added
    # (a user's brand replaces the built-in one of the same key).
    brands = {b.key: b for b in load_brands().brands}
    if doc.get("brands"):
        user = parse_brands({"brands": doc["brands"]}, "rules")
        brands.update((b.key, b) for b in user)
    catalogue = Catalogue(brands.values())

    def fs(key: str) -> frozenset[str]:
        return frozenset(x.lower() for x in s.get(key, []))

    return StructuralData(
        catalogue=catalogue,
        freemail=fs("freemail"),
        freemail_labels=fs("freemail_labels"),
        shorteners=fs("shorteners"),
        dangerous_ext=fs("dangerous_ext"),
        macro_ext=fs("macro_ext"),
        decoy_ext=fs("decoy_ext"),
        html_ext=fs("html_ext"),
        lure_hosts=frozenset(h for h in fs("lure_hosts") if "/" not in h),
        lure_paths=tuple(
            (host, "/" + path) for host, _, path in (p.partition("/") for p in fs("lure_paths"))
        ),
        meeting_hosts=fs("meeting_hosts"),
        hosted_senders=fs("hosted_senders"),
    )


# ---------------------------------------------------------------- evaluation


class _Field:
    """One field of a message: original text, normalised text, matches (all lazy)."""

    __slots__ = ("_ascii", "_plain", "_tracked", "matched", "norm", "original", "spans")

    def __init__(self, original: str, rules: RuleSet) -> None:
        self.original = original
        self.norm, self._plain = normalise_info(original)
        # ASCII text (most mail once normalised) is searched as bytes: offsets are the same.
        self._ascii = self.norm.encode("ascii") if self.norm.isascii() else None
        self.matched = (
            frozenset(rules.atom_set.Match(self._ascii or self.norm) or ())
            if self.norm
            else frozenset()
        )
        self.spans: dict[int, list[tuple[int, int]]] = {}
        self._tracked: tuple[str, list[int]] | None = None

    def positions(self, rules: RuleSet, atom: int) -> list[tuple[int, int]]:
        spans = self.spans.get(atom)
        if spans is None:
            if self._ascii is not None:
                spans = match_spans(rules.ascii_atom(atom), self._ascii, MAX_SPANS)
            else:
                spans = match_spans(rules.atoms[atom], self.norm, MAX_SPANS)
            self.spans[atom] = spans
        return spans

    def evidence(self, start: int, end: int) -> str:
        """The original text behind ``norm[start:end]`` with a little context."""
        last = len(self.norm) - 1
        first_last = (min(start, last), min(max(end - 1, 0), last))
        if self._plain and self.norm:
            s, e = collapsed_offsets(self.original, first_last)
            return _snippet(self.original, s, e + 1)
        if self._tracked is None:
            self._tracked = normalise_tracked(self.original)
        norm, offsets = self._tracked
        if norm != self.norm or not offsets:
            source, s, e = self.norm, start, end
        else:
            source = self.original
            s = offsets[first_last[0]]
            e = offsets[first_last[1]] + 1
        return _snippet(source, s, e)


def _snippet(text: str, start: int, end: int, context: int = 50, limit: int = 240) -> str:
    while start < end and not text[start].isalnum() and text[start] not in "+@$€£#(":
        start += 1
    while end > start and not text[end - 1].isalnum() and text[end - 1] not in ")/":
        end -= 1
    left = max(0, start - context)
    right = min(len(text), end + context)
    while left > 0 and not text[left - 1].isspace() and start - left < context + 20:
        left -= 1
    while right < len(text) and not text[right].isspace() and right - end < context + 20:
        right += 1
    snippet = " ".join(text[left:right].split())
    if len(snippet) > limit:
        snippet = snippet[: limit - 1] + "…"
    prefix = "…" if left > 0 else ""
    suffix = "…" if right < len(text) and not snippet.endswith("…") else ""
    return f"{prefix}{snippet}{suffix}"


def _words_between(norm: str, a: int, b: int) -> int:
    """Words between two positions: normalised text has exactly one space between words."""
    if b <= a:
        return 0
    return norm.count(" ", a, b)


def _distance(norm: str, x: tuple[int, int], y: tuple[int, int]) -> int:
    if x[1] <= y[0]:
        return _words_between(norm, x[1], y[0])
    if y[1] <= x[0]:
        return _words_between(norm, y[1], x[0])
    return 0


# Spans of one atom come from ``finditer``: ordered and non-overlapping, so their starts
# and their ends both ascend. Against a fixed span ``x``, the spans entirely before it
# form a prefix of the list (their distance to ``x`` shrinks towards its end), the spans
# entirely after it a suffix (distance grows), and those in between overlap it
# (distance 0). The searches below use that to count words over the few gaps next to
# ``x`` rather than from ``x`` to every span of the list (long bodies made that the
# engine's biggest cost); they return exactly what a scan of the whole list would.


def _partition(spans: list[tuple[int, int]], x: tuple[int, int]) -> tuple[int, int]:
    """(end of the "before" prefix, start of the "after" suffix) of ``spans`` for ``x``."""
    after = bisect_left(spans, x[1], key=_START)
    before = min(bisect_right(spans, x[0], key=_END), after)
    return before, after


def _nearest(
    norm: str, x: tuple[int, int], spans: list[tuple[int, int]], limit: int
) -> tuple[int, int] | None:
    """The first span in ``spans`` at the smallest word distance from ``x``, if that
    distance is at most ``limit``."""
    before, after = _partition(spans, x)
    best: tuple[int, int] | None = None
    best_d = limit + 1
    if before:
        j = before - 1
        d = _words_between(norm, spans[j][1], x[0])
        if d < best_d:
            # Earlier spans at the same distance come first in the list: take the first.
            while j > 0 and not _words_between(norm, spans[j - 1][1], spans[j][1]):
                j -= 1
            best, best_d = spans[j], d
    if best_d > 0 and before < after:
        return spans[before]
    if after < len(spans) and _words_between(norm, x[1], spans[after][0]) < best_d:
        return spans[after]
    return best


def _within(
    norm: str, x: tuple[int, int], spans: list[tuple[int, int]], limit: int
) -> list[tuple[int, int]]:
    """The spans of ``spans`` at most ``limit`` words from ``x``, in list order."""
    before, after = _partition(spans, x)
    lo = before
    d = 0
    while lo > 0:
        edge = spans[lo][1] if lo < before else x[0]
        d += _words_between(norm, spans[lo - 1][1], edge)
        if d > limit:
            break
        lo -= 1
    hi = after
    d = 0
    while hi < len(spans):
        edge = spans[hi - 1][0] if hi > after else x[1]
        d += _words_between(norm, edge, spans[hi][0])
        if d > limit:
            break
        hi += 1
    return spans[lo:hi]


def _match_rule(rules: RuleSet, rule: TextRule, fld: _Field) -> tuple[int, int] | None:
    """The span where every group of ``rule`` occurs within its window, not cancelled."""
    norm = fld.norm
    first, *others = rule.groups
    for anchor in fld.positions(rules, first):
        start, end = anchor
        ok = True
        for group in others:
            best = _nearest(norm, anchor, fld.positions(rules, group), rule.window)
            if best is None:
                ok = False
                break
            start, end = min(start, best[0]), max(end, best[1])
        if not ok or _words_between(norm, start, end) > rule.window:
            continue
        if _cancelled(rules, rule, fld, (start, end)):
            continue
        return start, end
    return None


# A cancelling phrase that is itself negated ("not through Upwork") does not cancel; a
# clause mark in between ends the negation ("If not, reset your password").
_NEGATED_BEFORE = re.compile(
    r"(?:\bnot|n't|\bnever|instead of|rather than|\bwithout|\bno|\bskip|\bavoid|\bbypass"
    r"|\bsem|\bsin|\bsans|\bohne|\bбез|\bмимо)"
    r"[^\w,.;:!?]{1,3}(?:\w+[^\w,.;:!?]{1,3})?$"
)


def _cancelled(rules: RuleSet, rule: TextRule, fld: _Field, span: tuple[int, int]) -> bool:
    for atoms, window in ((rule.unless, rule.unless_window), (rule.unless_near, rule.near_window)):
        for atom in atoms:
            if atom not in fld.matched:
                continue
            others = fld.positions(rules, atom)
            for other in others if window < 0 else _within(fld.norm, span, others, window):
                if _NEGATED_BEFORE.search(fld.norm, max(0, other[0] - 24), other[0]):
                    continue
                return True
    return False


def html_says_more(text: str, html: str) -> bool:
    """True when the HTML alternative's text is not just the plain part again."""
    return bool(html.strip()) and html != text and html.split() != text.split()


def _body_texts(msg: Message) -> list[str]:
    """The texts of the "body" field: the plain text and, when it says something else,
    the text of the HTML alternative too (a bland text/plain part must not hide a
    request written only in text/html). Each is scanned on its own."""
    text, html = msg.text, msg.html_text
    if not text.strip():
        return [html]
    return [text, html] if html_says_more(text, html) else [text]


def _field_texts(msg: Message) -> dict[str, str | list[str]]:
    return {
        "subject": msg.subject,
        "body": _body_texts(msg),
        "attachments": "\n".join(a.text for a in msg.attachments if a.text),
        "links": "\n".join(link.href for link in msg.links),
        "from": f"{msg.from_.name} {msg.from_.addr}" if msg.from_ else "",
        "filenames": "\n".join(a.filename for a in msg.attachments if a.filename),
    }


def evaluate(
    rules: RuleSet,
    msg: Message,
    fields_out: dict[str, list[_Field]] | None = None,
    relayed: bool = False,
) -> Verdict:
    """Run every rule and structural check on ``msg`` and sum the findings into a verdict.

    ``fields_out``, when given, receives the normalised fields (the concept layer reads the
    same normalised text instead of normalising it again). ``relayed``: the message is a
    platform's notification carrying someone's words (see ``is_relayed_message``): every
    text rule runs on them, while the structural checks still trust the platform.
    """
    notes: list[str] = []
    unchecked = list(msg.unchecked)
    fields: dict[str, list[_Field]] = {} if fields_out is None else fields_out
    for name, value in _field_texts(msg).items():
        if not value or name not in rules.fields_used:
            continue
        for text in [value] if isinstance(value, str) else value:
            if not text:
                continue
            pieces = [text]
            if len(text) > MAX_SCAN_CHARS:
                # The beginning and the end, each on its own: padding in front of (or
                # behind) a sentence cannot push it out of reach, and no match spans
                # the gap between the two.
                note = (
                    f"{name}: only the first and last {MAX_SCAN_CHARS // 2:,} of "
                    f"{len(text):,} characters were scanned"
                )
                notes.append(note)
                unchecked.append(note)
                half = MAX_SCAN_CHARS // 2
                pieces = [text[:half], text[len(text) - half :]]
            fields.setdefault(name, []).extend(_Field(piece, rules) for piece in pieces)
    # Rules that can fire at all: every group atom occurs in one field (one set lookup per
    # matched atom, so harmless mail with few matches costs almost nothing).
    candidates: set[int] = set()
    for units in fields.values():
        for seen in units:
            for atom in seen.matched:
                candidates.update(rules.by_atom.get(atom, ()))
    trusted = is_trusted_platform_sender(rules.structural, msg)
    lures = _concepts_found(rules, fields)
    if not candidates:
        return _verdict(rules, _structural_findings(rules, msg, trusted, lures), notes, unchecked)
    anywhere = frozenset().union(
        *(unit.matched for f in DEFAULT_FIELDS for unit in fields.get(f, ()))
    )
    bulk = msg.is_bulk
    findings: list[Finding] = []
    for index in sorted(candidates):
        rule = rules.text_rules[index]
        if trusted and not relayed and rule.trusted == "skip":
            continue
        if rule.requires and anywhere.isdisjoint(rule.requires):
            continue
        for name, fld in ((n, unit) for n in rule.fields for unit in fields.get(n, ())):
            if not rule.group_set <= fld.matched:
                continue
            span = _match_rule(rules, rule, fld)
            if span is None:
                continue
            score = rule.score
            dampened = bulk and rule.bulk == "dampen"
            if dampened:
                score = round(score * rules.bulk_factor, 2)
            findings.append(
                Finding(
                    rule=rule.id,
                    category=rule.category,
                    score=score,
                    where=name,
                    evidence=fld.evidence(*span),
                    explanation=rule.explanation,
                    description=rule.description,
                    dampened=dampened,
                    supporting=rule.supporting,
                )
            )
            break
    findings.extend(_structural_findings(rules, msg, trusted, lures))
    return _verdict(rules, findings, notes, unchecked)


def _concepts_found(rules: RuleSet, fields: Mapping[str, list[_Field]]) -> set[str]:
    """The names of the concepts in the subject and the new text (from the set pass every
    field already had: no search of its own)."""
    cs = rules.concepts
    if cs is None:
        return set()
    return {
        cs.concepts[i].name
        for name in ("subject", "body")
        for fld in fields.get(name, ())
        for i in rules.concepts_in(fld.matched)
    }


def text_categories(rules: RuleSet, text: str, trusted: bool = False) -> set[str]:
    """The categories of the text rules that fire on ``text`` read as a body: what the
    judge wants to know about quoted history and signatures. No structural checks, no
    findings, no evidence (cheaper than :func:`evaluate`); ``trusted``: the sender is a
    verified platform (rules marked ``trusted = "skip"`` do not run)."""
    if not text or "body" not in rules.fields_used:
        return set()
    pieces = [text]
    if len(text) > MAX_SCAN_CHARS:
        half = MAX_SCAN_CHARS // 2
        pieces = [text[:half], text[len(text) - half :]]
    units = [_Field(piece, rules) for piece in pieces]
    candidates: set[int] = set()
    for unit in units:
        for atom in unit.matched:
            candidates.update(rules.by_atom.get(atom, ()))
    anywhere = frozenset().union(*(unit.matched for unit in units))
    found: set[str] = set()
    for index in sorted(candidates):
        rule = rules.text_rules[index]
        if rule.category in found or rule.score <= 0 or "body" not in rule.fields:
            continue
        if (trusted and rule.trusted == "skip") or (
            rule.requires and anywhere.isdisjoint(rule.requires)
        ):
            continue
        for unit in units:
            if rule.group_set <= unit.matched and _match_rule(rules, rule, unit) is not None:
                found.add(rule.category)
                break
    return found


def _structural_findings(
    rules: RuleSet, msg: Message, trusted: bool, lures: Set[str] = frozenset()
) -> list[Finding]:
    """``lures``: the concepts found in the text (a brand claimed together with a lure is
    an impersonation)."""
    out: list[Finding] = []
    seen: set[str] = set()
    hits: list[Hit] = run_checks(rules.structural, msg)
    hits.extend(check_impersonation(rules.structural.catalogue, msg, lures))
    hits.extend(check_lure_link(rules.structural, msg, lures, hits))
    hits.extend(check_address_in_subject(msg, lures))
    for hit in hits:
        spec = rules.checks.get(hit.check)
        if spec is None or hit.check in seen or (trusted and spec.trusted == "skip"):
            continue
        seen.add(hit.check)
        out.append(
            Finding(
                rule=spec.id,
                category=spec.category,
                score=spec.score,
                where=hit.where,
                evidence=hit.evidence,
                explanation=spec.explanation,
                description=spec.description,
                supporting=spec.supporting,
            )
        )
    return out


def category_sums(findings: Sequence[Finding]) -> dict[str, float]:
    """The hand-set scores of ``findings`` summed per category (see :func:`_verdict`)."""
    counted = [] if all(f.supporting for f in findings) else findings
    per_category: dict[str, float] = {}
    dampened_max: dict[str, float] = {}
    for f in counted:
        if f.dampened:
            dampened_max[f.category] = max(dampened_max.get(f.category, 0.0), f.score)
        else:
            per_category[f.category] = per_category.get(f.category, 0.0) + f.score
    for category, score in dampened_max.items():
        per_category[category] = per_category.get(category, 0.0) + score
    return per_category


def _verdict(
    rules: RuleSet, findings: list[Finding], notes: list[str], unchecked: Sequence[str] = ()
) -> Verdict:
    """Sum findings per category into the risk level.

    A message not read whole (``unchecked``: the parser's reasons and the engine's own
    cuts) also gets :func:`unchecked_finding`, which scores nothing and names no category.

    Findings from bulk mail count only with their largest score per category (a newsletter
    quoting five warning examples is not five times as risky), and "supporting" findings
    count only next to a finding that is not.
    """
    per_category = category_sums(findings)
    counting = [c for c in CATEGORIES if per_category.get(c, 0.0) >= rules.levels["low"]]
    total = round(sum(per_category[c] for c in counting), 2)
    risk = "none"
    for level in ("low", "medium", "high"):
        if counting and total >= rules.levels[level]:
            risk = level
    reasons = tuple(dict.fromkeys(unchecked))
    if reasons and not any(f.rule == UNCHECKED_RULE for f in findings):
        findings.append(unchecked_finding(reasons))
    findings.sort(key=lambda f: (-f.score, f.rule))
    return Verdict(
        risk=risk,
        score=total,
        categories=tuple(counting),
        findings=tuple(findings),
        notes=tuple(notes),
        unchecked=reasons,
    )
