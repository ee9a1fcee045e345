"""The rule language's terms, translated to RE2 syntax.

A term is a phrase of words (``send money``), with lexicon names (``{messenger}``), word
wildcards (``*``, ``#``), optional separators (``cash ?app``), look-alike letters
(``~paypal`` matches ``p4yp4l``), RE2 character classes and raw patterns (``re:...``).
:class:`TermCompiler` turns one term into an RE2 pattern; ``rules.py`` compiles the rules'
terms with it and ``concepts.py`` the concepts'. Knows nothing of rules or messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import re2

from guard.policy.model import RulesError

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


def _expand_obfuscated(word: str) -> str:
    """``paypal`` → a pattern that also matches ``p4yp4l``, ``pay pal``, ``pay-pal``."""
    parts = []
    for ch in word:
        if ch.isspace():
            continue
        cls = _LEET.get(ch, ch)
        parts.append(f"[{re2.escape(cls)}]" if len(cls) > 1 else re2.escape(ch))
    return r"[\s.\-_*']?".join(parts)


class TermCompiler:
    """Translates terms, resolving lexicon names (each once) from ``lexicon``."""

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
