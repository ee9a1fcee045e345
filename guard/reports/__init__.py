"""What the guard writes for people: the daily digest, evidence exports, reply drafts.

Owns selection and rendering of findings (Jinja2 templates in ``templates/``), cleaning
untrusted mail text before it is shown, the digest's SMTP delivery and the evidence
bundle (writing and verifying it).

May import ``guard.errors``, ``guard.config``, ``guard.mail``, ``guard.policy``,
``guard.store`` and ``guard.mailbox``; never ``guard.service`` or ``guard.cli``.

Where each concern lives:

- ``text.py``: the one untrusted-text sanitiser (mail text, names, terminal, JSON Lines).
- ``views.py``: the view models of both reports (digest and evidence timeline).
- ``digest.py``: the digest's selection, rendering and building; ``advice.py`` its fixed
  advice; ``schedule.py`` when it is due; ``delivery.py`` sending it (and a bundle's
  hash) over ``smtp.py``, the SMTP client.
- ``selection.py``: which threads an export covers; ``export.py``: writing a bundle from
  the originals (``originals.py``, hash-checked), the timeline (``timeline.py``) and the
  manifest, as a zip (``bundle.py``); ``verify.py``: checking a bundle, reading the zip
  safely with ``zipcheck.py``.
- ``drafts.py``: reply drafts; ``templating.py``: the Jinja2 environment.

The names below are imported on first use, so that ``from guard.reports import clean``
(the command line, at start) does not load the store, Jinja2 and the zip code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guard.reports.advice import ADVICE, SUGGESTED_REPLIES
    from guard.reports.bundle import ExportError
    from guard.reports.delivery import (
        DigestRun,
        SendResult,
        check_smtp,
        compose_message,
        mail_manifest_hash,
        run_digest,
        send_pending,
        summarize,
    )
    from guard.reports.digest import DigestError, build_digest, preview, select_digest
    from guard.reports.export import ExportResult, ImapSource, MessageOutcome, export_bundle
    from guard.reports.originals import MessageSource, SourceUnavailable
    from guard.reports.schedule import digest_slot, due
    from guard.reports.selection import (
        NoThreadMatches,
        ThreadMatch,
        TooManyThreads,
        find_threads,
        select_threads,
    )
    from guard.reports.text import clean, defang, json_line, safe_text
    from guard.reports.timeline import bundle_zone
    from guard.reports.verify import BundleError, VerifyReport, verify_bundle

__all__ = [
    "ADVICE",
    "SUGGESTED_REPLIES",
    "BundleError",
    "DigestError",
    "DigestRun",
    "ExportError",
    "ExportResult",
    "ImapSource",
    "MessageOutcome",
    "MessageSource",
    "NoThreadMatches",
    "SendResult",
    "SourceUnavailable",
    "ThreadMatch",
    "TooManyThreads",
    "VerifyReport",
    "build_digest",
    "bundle_zone",
    "check_smtp",
    "clean",
    "compose_message",
    "defang",
    "digest_slot",
    "due",
    "export_bundle",
    "find_threads",
    "json_line",
    "mail_manifest_hash",
    "preview",
    "run_digest",
    "safe_text",
    "select_digest",
    "select_threads",
    "send_pending",
    "summarize",
    "verify_bundle",
]


def _home(name: str) -> str | None:
    """The module of this package that defines ``name`` (one of ``__all__``)."""
    for module in _MODULES:
        if name in importlib.import_module(f"guard.reports.{module}").__all__:
            return module
    return None  # pragma: no cover - test_reports_api checks every name has a home


# Searched in this order: the light modules first (the command line asks for ``clean``).
_MODULES = (
    "text",
    "selection",
    "bundle",
    "zipcheck",
    "verify",
    "advice",
    "digest",
    "schedule",
    "smtp",
    "delivery",
    "originals",
    "timeline",
    "export",
)


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _home(name)
    value = getattr(importlib.import_module(f"guard.reports.{module}"), name)
    globals()[name] = value
    return value
