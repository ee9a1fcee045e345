"""HTML to the text a reader sees: block layout kept, hidden text removed, anchors
collected as links, markup nesting and size bounded before the HTML parser (selectolax /
lexbor) sees it.

Hidden text (display:none, zero font-size or opacity, visibility hidden, zero height
with overflow hidden, the ``hidden`` attribute) is removed and its size noted.
"""

from __future__ import annotations

import html as html_lib
import re
from typing import Any

from selectolax.lexbor import LexborHTMLParser

from guard.mail.limits import MAX_HTML_DEPTH, MAX_HTML_TAGS, MAX_LINKS, MAX_TEXT_CHARS, Defects
from guard.mail.links import bounded_href
from guard.mail.model import Link

_MAX_HTML_CHARS = 2 * MAX_TEXT_CHARS  # characters of one HTML part ever parsed

# HTML to text. Block-level tags get a form feed inserted before them in the source
# (a whitespace character the HTML parser keeps in place, even inside tables, and that
# real mail practically never contains); after extraction every run of form feeds
# becomes one line break. Table cells get a plain space. Inline tags get nothing, so
# ``D<span>is</span>cord`` reads "Discord".
# The alternation is written as a trie: the regex engine tries branches one by one at
# every "<", and this runs over every HTML body.
_BLOCK_TAG_TRIE = (
    r"a(?:rticle|ddress|side)|b(?:r|lockquote)|c(?:enter|aption)|d(?:iv|[ldt]|etails)"
    r"|f(?:ooter|orm|ieldset|igure|igcaption)|h(?:[1-6r]|eader)|l(?:i|egend)|main|nav|ol"
    r"|p(?:re)?|s(?:ection|ummary)|t(?:r|able)|ul"
)
_BLOCK_TAG_RE = re.compile(r"<(?=/?(?:" + _BLOCK_TAG_TRIE + r")[\s/>])", re.I)
_CELL_TAG_RE = re.compile(r"<(?=t[dh][\s/>])", re.I)
_DROPPED_TAGS = ["script", "style", "head", "title", "noscript", "template"]
_HIDDEN_CANDIDATES = (
    '[hidden], [style*="none" i], [style*="hidden" i], [style*="font-size" i],'
    ' [style*="opacity" i], [style*="height" i]'
)
_CSS_ZERO = r"(?:0+(?:\.0*)?|\.0+)(?:px|pt|em|rem|%)?\s*(?:!\s*important\s*)?(?:;|$)"
_DISPLAY_NONE_RE = re.compile(r"(?:^|[;\s])display\s*:\s*none", re.I)
_OPACITY_ZERO_RE = re.compile(r"(?:^|[;\s])opacity\s*:\s*" + _CSS_ZERO, re.I)
_FONT_SIZE_RE = re.compile(r"(?:^|[;\s])font-size\s*:\s*([^;]*)", re.I)
_FONT_SIZE_ZERO_RE = re.compile(r"(?:0+(?:\.0*)?|\.0+)(?:px|pt|em|rem|%)?\s*(?:!\s*important)?\s*$")
_FONT_SIZE_RELATIVE_RE = re.compile(r"[\d.]+\s*(?:em|%)|inherit|smaller|larger|calc|var", re.I)
_VISIBILITY_RE = re.compile(r"(?:^|[;\s])visibility\s*:\s*([a-z]+)", re.I)
_HIDES_ALL, _HIDES_INHERITED = 1, 2
# Cheap hints, searched in the lower-cased source (each starts with a literal, which the
# regex engine finds fast); only when one matches are the elements themselves checked.
_HIDDEN_HINT_RES = tuple(
    re.compile(pattern)
    for pattern in (
        r"display\s*:\s*none",
        r"visibility\s*:\s*hidden",
        r"hidden[\s=/>]",
        r"font-size\s*:\s*(?:0+(?:\.0*)?|\.0+)(?![\d.])",
        r"opacity\s*:\s*(?:0+(?:\.0*)?|\.0+)(?![\d.])",
        r"height\s*:\s*(?:0+(?:\.0*)?|\.0+)(?![\d.])",
    )
)
_ZERO_HEIGHT_RE = re.compile(r"(?:^|[;\s])(?:max-)?height\s*:\s*" + _CSS_ZERO, re.I)
_OVERFLOW_HIDDEN_RE = re.compile(r"overflow(?:-[xy])?\s*:\s*hidden", re.I)
_ZERO_WIDTH_RE = re.compile("[\u00ad\u180e\u200b-\u200d\u2060\ufeff]+")


def _visible(text: str) -> str:
    """Collapse whitespace and drop zero-width characters (``Pay&#8203;Pal``)."""
    if not text.isascii():
        text = _ZERO_WIDTH_RE.sub("", text)
    return " ".join(text.split())


def _may_hide(lowered: str) -> bool:
    """Whether the lower-cased HTML source contains any hiding construct at all."""
    display, visibility, attribute, font_size, opacity, height = _HIDDEN_HINT_RES
    return bool(
        display.search(lowered)
        or visibility.search(lowered)
        or attribute.search(lowered)
        or font_size.search(lowered)
        or opacity.search(lowered)
        or height.search(lowered)
    )


def _font_size_zero(style: str) -> bool | None:
    """True for a zero font-size, False for one that shows text again, None: inherited."""
    match = _FONT_SIZE_RE.search(style)
    if match is None:
        return None
    value = match.group(1).strip()
    if _FONT_SIZE_ZERO_RE.match(value):
        return True
    if _FONT_SIZE_RELATIVE_RE.match(value):  # relative to a zero size is still zero
        return None
    return False


def _css_visible(style: str) -> bool | None:
    """The ``visibility`` an element declares (False: hidden/collapse), None: inherited."""
    match = _VISIBILITY_RE.search(style)
    if match is None:
        return None
    return match.group(1).lower() not in ("hidden", "collapse")


def _hiding(attrs: dict[str, str | None]) -> int:
    """How an element hides its content.

    ``_HIDES_ALL``: nothing inside can show (``hidden`` attribute, display:none, opacity 0,
    zero height with overflow hidden). ``_HIDES_INHERITED``: font-size 0 or visibility
    hidden, which a descendant can undo (e-mail layouts put font-size:0 on table cells
    and give the text inside its own size). 0: not hidden.
    """
    if "hidden" in attrs:
        return _HIDES_ALL
    style = attrs.get("style")
    if not style:
        return 0
    if (
        _DISPLAY_NONE_RE.search(style)
        or _OPACITY_ZERO_RE.search(style)
        or (_ZERO_HEIGHT_RE.search(style) and _OVERFLOW_HIDDEN_RE.search(style))
    ):
        return _HIDES_ALL
    if _font_size_zero(style) or _css_visible(style) is False:
        return _HIDES_INHERITED
    return 0


def _visible_chars(text: str) -> int:
    return len("".join(text.split()))


def _remove_inherited(node: Any) -> int:
    """Remove the text of ``node`` that inherits its zero font-size / hidden visibility;
    returns how many non-space characters went."""
    total = _visible_chars(node.text())
    if not total:
        return 0
    source = node.html.lower()
    if source.count("font-size") <= 1 and "visible" not in source:
        _drop(node)  # nothing inside shows itself again: the whole element goes
        return total
    style = node.attrs.get("style") or ""
    font_zero, visible = bool(_font_size_zero(style)), _css_visible(style)
    stack = [(child, font_zero, visible) for child in node.iter(include_text=True)]
    removed = 0
    doomed = []
    while stack:
        child, zero, visible = stack.pop()
        if child.is_text_node:
            if zero or visible is False:
                count = _visible_chars(child.text(deep=False))
                if count:
                    removed += count
                    doomed.append(child)
        elif child.is_element_node:
            child_style = child.attrs.get("style") or ""
            if child_style:
                own_zero = _font_size_zero(child_style)
                own_visible = _css_visible(child_style)
                zero = zero if own_zero is None else own_zero
                visible = visible if own_visible is None else own_visible
            stack.extend(
                (grandchild, zero, visible) for grandchild in child.iter(include_text=True)
            )
    for text_node in doomed:
        text_node.decompose()
    return removed


def _drop(node: Any) -> None:
    """Remove ``node`` from its tree; the root element cannot go, so its content does."""
    if node.tag == "html":
        for child in list(node.iter(include_text=True)):
            child.decompose()
    else:
        node.decompose()


def _remove_hidden(tree: Any, defects: Defects) -> None:
    """Remove hidden elements (inline styles and the ``hidden`` attribute) from ``tree``;
    note how much non-space text they held. ``aria-hidden`` alone is not hiding."""
    found = []
    for node in tree.css(_HIDDEN_CANDIDATES):
        kind = _hiding(node.attributes)
        if kind:
            found.append((node, kind))
    if not found:
        return
    hide_all = {node.mem_id for node, kind in found if kind == _HIDES_ALL}
    hide_any = {node.mem_id for node, _ in found}
    whole: list[Any] = []
    inherited: list[Any] = []
    for node, kind in found:
        parent = node.parent
        while parent is not None:
            # Inside an element that goes anyway, or (for the inherited kinds) inside one
            # whose walk will see it: nothing to do for this one.
            if parent.mem_id in hide_all or (kind != _HIDES_ALL and parent.mem_id in hide_any):
                break
            parent = parent.parent
        else:
            (whole if kind == _HIDES_ALL else inherited).append(node)
    del found  # let go of nested nodes before their ancestors are destroyed
    removed = 0
    for node in whole:
        removed += _visible_chars(node.text())
        _drop(node)
    for node in inherited:
        removed += _remove_inherited(node)
    if removed:
        defects.add(f"html: hidden text removed ({removed} chars)")


def html_to_text(html: str, links: list[Link] | None, defects: Defects) -> str:
    """Visible text of an HTML document; appends its ``<a href>`` links to ``links``.

    A document over the size limit is read as two: its beginning and its end (so a
    megabyte of comment or padding cannot hide what follows it), the cut noted.
    """
    if len(html) > _MAX_HTML_CHARS:
        defects.cut(f"html: only the first and last {_MAX_HTML_CHARS // 2} characters were read")
        half = _MAX_HTML_CHARS // 2
        head = _html_doc_text(html[:half], links, defects)
        tail = html[len(html) - half :]
        del html
        return head + "\n" + _html_doc_text(tail, links, defects)
    return _html_doc_text(html, links, defects)


# Void elements (never pushed on the HTML parser's stack of open elements), and those
# an opening sibling closes implicitly (so sloppy but ordinary HTML is not counted deep).
_VOID_TAGS = frozenset(
    [
        "area",
        "base",
        "basefont",
        "bgsound",
        "br",
        "col",
        "embed",
        "frame",
        "hr",
        "image",
        "img",
        "input",
        "keygen",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    ]
)
_IMPLIED_END_TAGS = frozenset(
    [
        "p",
        "li",
        "dd",
        "dt",
        "option",
        "optgroup",
        "rb",
        "rp",
        "rt",
        "rtc",
        "td",
        "th",
        "tr",
        "tbody",
        "thead",
        "tfoot",
        "caption",
        "colgroup",
    ]
)
_RAW_TEXT_TAGS = frozenset(
    ["script", "style", "xmp", "iframe", "noembed", "noframes", "textarea", "title"]
)
_HTML_FAST_TAGS = 4000  # with fewer "<" than this, nesting cannot cost much: no pre-pass
_HTML_TOKEN_RE = re.compile(
    r"<!--(?:-?>|.*?(?:--!?>|\Z))"  # a comment, the abrupt "<!-->" forms too
    r"|<[!?][^>]*>?"  # doctype, bogus comment
    r"|<(/?)([A-Za-z][^\t\n\f\r />]*)"  # a tag: end slash, name
    r"(?:[^>\"'=]+|[\"']|=[\t\n\f\r ]*\"[^\"]*\"?|=[\t\n\f\r ]*'[^']*'?|=)*>?",
    re.S,
)
_BLOCK_NAMES = re.compile(r"(?:" + _BLOCK_TAG_TRIE + r")\Z", re.I)


def _limit_html(html: str, defects: Defects) -> tuple[str, str]:
    """``html`` with its nesting bounded, and the text of what lies past the tag limit.

    The HTML parser's tree building costs time in proportion to the depth of the open
    elements for each start tag (120,000 nested ``<div>`` took 36 s). A linear pass
    estimates that depth (an end tag closes only the element on top, or the implied ends
    above it, so mismatched end tags cannot hide depth) and drops the start and end tags
    of elements deeper than MAX_HTML_DEPTH (block tags leave a line break); past
    MAX_HTML_TAGS start tags the rest of the document is returned separately as text
    with its tags removed. Returns ``(html, rest_text)``.
    """
    if html.count("<") < _HTML_FAST_TAGS:
        return html, ""
    stack: list[str] = []
    excess: list[str] = []
    out: list[str] = []
    pos = 0
    tags = 0
    deep = False
    rest = ""
    search = _HTML_TOKEN_RE.search
    match = search(html)
    while match is not None:
        name = match.group(2)
        if name is None:
            match = search(html, match.end())
            continue
        name = name.lower()
        drop = False
        if match.group(1):  # an end tag
            if stack and stack[-1] == name:
                stack.pop()
            elif excess and excess[-1] == name:
                excess.pop()
                drop = True
            elif name in stack[-4:]:
                while stack and stack[-1] != name and stack[-1] in _IMPLIED_END_TAGS:
                    stack.pop()
                if stack and stack[-1] == name:
                    stack.pop()
        else:
            tags += 1
            if tags > MAX_HTML_TAGS:
                defects.cut(f"html: more than {MAX_HTML_TAGS} tags; the rest read without markup")
                rest = _HTML_TOKEN_RE.sub(" ", html[match.start() :])
                html = html[: match.start()]
                break
            if name not in _VOID_TAGS:
                if stack and stack[-1] == name and name in _IMPLIED_END_TAGS:
                    stack.pop()
                if len(stack) >= MAX_HTML_DEPTH:
                    excess.append(name)
                    drop = deep = True
                else:
                    stack.append(name)
                    if name in _RAW_TEXT_TAGS:  # its content is text up to its end tag
                        close = re.compile(r"</" + re.escape(name) + r"[\t\n\f\r />]", re.I)
                        found = close.search(html, match.end())
                        if found is None:
                            break
                        match = search(html, found.start())
                        continue
        if drop:
            out.append(html[pos : match.start()])
            out.append("\f" if _BLOCK_NAMES.match(name) else "")
            pos = match.end()
        match = search(html, match.end())
    if deep:
        defects.cut(f"html: nested deeper than {MAX_HTML_DEPTH} elements; deeper markup ignored")
    if out:
        out.append(html[pos:])
        html = "".join(out)
    return html, rest


def _html_doc_text(html: str, links: list[Link] | None, defects: Defects) -> str:
    """:func:`html_to_text` for a document within the size limit."""
    if "\f" in html:
        html = html.replace("\f", " ")
    html, rest = _limit_html(html, defects)
    html = _CELL_TAG_RE.sub(" <", _BLOCK_TAG_RE.sub("\f<", html))
    lowered = html.lower()
    tree = LexborHTMLParser(html)
    dropped = [tag for tag in _DROPPED_TAGS if "<" + tag in lowered]
    if dropped:
        tree.strip_tags(dropped, recursive=True)

    if links is not None:
        # tags("a") rather than css("a[href]"): the CSS engine costs ~20 µs per call here.
        for anchor in tree.tags("a"):
            href = anchor.attrs.get("href")
            if href is None:
                continue
            if len(links) >= MAX_LINKS:
                break
            if "\f" in href:
                href = href.replace("\f", "")
            href = bounded_href(href)
            label = _visible(anchor.text())
            if not label:
                image = anchor.css_first("img[alt]")
                if image is not None:
                    label = _visible(image.attrs.get("alt") or "")
            links.append(Link(label, href.strip()))

    if _may_hide(lowered):
        try:
            _remove_hidden(tree, defects)
        except Exception as exc:  # keep the text rather than lose the part
            defects.add(f"html: hidden-text check failed: {type(exc).__name__}: {exc}")

    root = tree.body or tree.root
    text = root.text() if root is not None else ""
    if not text.isascii():
        text = _ZERO_WIDTH_RE.sub("", text)
    if rest:
        text += "\f" + html_lib.unescape(rest)
    # Form feeds are the block boundaries; all other whitespace collapses to a space.
    return "\n".join(filter(None, [" ".join(line.split()) for line in text.split("\f")]))
