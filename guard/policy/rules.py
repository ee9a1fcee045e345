"""The rules: loading, merging and compiling them into a :class:`RuleSet`.

Rules are data (``rules.toml`` in this package, plus user files; a user file extends the
lexicon and overrides rules, checks, scores and levels). Every term of every rule is
compiled to RE2 (``terms.py``), which matches in linear time whatever the pattern, and all
of them, with the concepts' patterns, are also put into one ``re2.Set`` (:class:`LazySet`)
so that a single pass over a field tells which terms occur at all. Evaluating messages
against a :class:`RuleSet` is ``engine.py``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import re2

from guard.policy.brands import Catalogue, load_brands, parse_brands
from guard.policy.concepts import ConceptSet, compile_concepts
from guard.policy.model import CATEGORIES, LEVELS, RulesError, read_toml
from guard.policy.structural import StructuralData
from guard.policy.terms import TermCompiler

FIELDS = ("subject", "body", "attachments", "links", "from", "filenames")
DEFAULT_FIELDS = ("subject", "body", "attachments")


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


def _stated(raw: Mapping[str, Any], trusted: str) -> dict[str, Any]:
    """What a rule and a check both state besides what they look for: whether they run on
    a verified platform's mail (``trusted``: the default), whether they only support
    another finding, and their words for the reader."""
    return {
        "trusted": str(raw.get("trusted", trusted)),
        "supporting": bool(raw.get("supporting", False)),
        "description": str(raw.get("description", "")),
        "explanation": _prose(raw, "explanation"),
    }


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
    doc = read_toml("rules", None, builtin)
    sources = ["built-in"]
    for path in extra:
        path = Path(path)
        _merge(doc, read_toml("rules", path), str(path))
        sources.append(str(path))
    concepts = resources.files("guard.policy").joinpath("concepts.toml").read_text(encoding="utf-8")
    return _compile(doc, tuple(sources), read_toml("rules", None, concepts))


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

    compiler = TermCompiler(doc.get("lexicon", {}), "lexicon")
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
            groups, unless, unless_near, requires = (
                tuple(
                    atom(compiler.term(t), f"{where}.{key}")
                    for t in (terms if key == "all" else _str_list(raw, key, where))
                )
                for key in ("all", "unless", "unless_near", "requires")
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
                **_stated(raw, trusted="keep"),
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
            **_stated(raw, trusted="skip"),
        )
    set_patterns = list(atom_sources)
    concepts = None
    if concept_doc is not None:
        lexicon = {**doc.get("lexicon", {}), **concept_doc.get("lexicon", {})}
        try:
            concepts = compile_concepts(
                concept_doc, TermCompiler(lexicon, "concepts").term, own_set=False
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
