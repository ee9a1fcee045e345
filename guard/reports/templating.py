"""The jinja2 environment shared by the digest and the evidence timeline.

Autoescape is on for ``.html`` templates: that is what makes mail content inert there.
Text templates are not HTML, and escaping them would only show "&lt;" to the reader.
"""

from __future__ import annotations

import functools
import textwrap

import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("guard.reports", "templates"),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=True, default=False
        ),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["wrap"] = wrap
    return env


def wrap(text: str, width: int = 76, indent: str = "", first: str | None = None) -> str:
    """Fill ``text`` to ``width``; long words (a defanged URL, a hash) stay in one piece."""
    return textwrap.fill(
        text,
        width=width,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
