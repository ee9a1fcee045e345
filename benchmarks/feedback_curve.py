"""How much the user's corrections ("this is safe", "you missed this") help, per corpus.

    .venv/bin/python benchmarks/feedback_curve.py [--corpus DIR]... [--steps 0,10,25,50]
        [--min-risk medium] [--jobs 2] [--fingerprint-cost [DIR]] [--campaign-check DIR]

Replays a labelled writer corpus (default ``../shared/corpus/writers/a``) in date order
(Date header; ties, and messages without a date after the dated ones, by file name) as a
user who corrects each mistake as it appears, through :func:`guard.policy.feedback.
apply_feedback`, the function the scan calls:

- a ham message the guard flags (risk at least ``--min-risk``, by default ``medium``: what
  the scanner labels) is marked safe: its sender becomes trusted for the text categories
  of the verdict (not for the user's own sent mail, tagged ``sent``: the account's own
  address is never trusted);
- a risky message (``labels.csv`` names a category) the guard does not flag is reported:
  its fingerprint becomes a campaign whose categories are the labelled ones.

Each message is judged as the guard would have judged it when it arrived: with the
feedback of the corrections made before it. The user stops correcting after N corrections
(N from ``--steps``). For each N the table gives macro-F1, risky recall and ham flag rate
(``guard.evaluation``: the definitions of ``make eval``; "flagged" at ``--min-risk``) on

- **rest**: the messages after the N-th correction (all of them for N = 0), beside the same
  messages judged with no feedback at all (``base``), so the gain is read on one set;
- **tail**: the fixed last 40 % of the corpus, the same set for every N.

"made" says how many corrections were made (safe + reported) when the corpus has fewer
mistakes than N. ``--fingerprint-cost`` also times :func:`message_fingerprint` over the
messages of a directory (default ``../shared/corpus/public/ham``, first 500).
``--campaign-check RISKY_DIR`` replays a plain all-risky directory (real campaigns:
``public/risky/phishing_pot``, ``public/risky/spamassassin-spam``) reporting every message
the guard misses, counts the later messages only a report flags, and how many of the first
1000 messages of ``--ham`` are similar to one of those reports. Prints numbers only; no
targets.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from guard.evaluation import judge_message, outcome_from_verdict, parse_label_rows, summarize
from guard.mail import Message, parse_message
from guard.mail.sources import iter_sources, read_message_file
from guard.policy import CATEGORIES, Verdict, evaluate, level_at_least, load_rules
from guard.policy.feedback import (
    TEXT_CATEGORIES,
    Feedback,
    ReportedCampaign,
    apply_feedback,
    best_campaign,
    message_fingerprint,
)

BENCH_DIR = Path(__file__).resolve().parent
SHARED = BENCH_DIR.parent.parent / "shared" / "corpus"
TAIL = 0.4


@dataclass(frozen=True)
class Item:
    name: str
    expected: frozenset[str]
    sent: bool  # the user's own message (tag "sent"): marking it safe trusts no sender
    msg: Message
    base: Verdict


@dataclass(frozen=True)
class Line:
    corpus: str
    n: int
    made: tuple[int, int]  # (marked safe, reported)
    rest: int
    rest_fb: tuple[float | None, float | None, float | None]
    rest_base: tuple[float | None, float | None, float | None]
    tail_fb: tuple[float | None, float | None, float | None]


def _load(corpus: Path) -> list[Item]:
    rules = load_rules()
    text = (corpus / "labels.csv").read_text(encoding="utf-8-sig")
    items = []
    for row in parse_label_rows(text, "labels.csv"):
        raw = read_message_file(corpus / row.file)
        verdict = judge_message(rules, raw, row.file)
        sent = "sent" in row.tags
        items.append(Item(row.file, row.categories, sent, parse_message(raw), verdict))

    def key(item: Item) -> tuple[float, str]:
        d = item.msg.date
        return (d.timestamp() if d is not None else math.inf, item.name)

    return sorted(items, key=key)


def _figures(
    items: list[Item], verdicts: list[Verdict], min_risk: str
) -> tuple[float | None, float | None, float | None]:
    outcomes = [
        outcome_from_verdict(i.name, i.expected, v, min_risk)
        for i, v in zip(items, verdicts, strict=True)
    ]
    report = summarize(outcomes, "", min_risk)
    return report.macro_f1, report.risky_recall, report.ham_flag_rate


def _replay(items: list[Item], limit: int, min_risk: str) -> tuple[list[Verdict], int, list[int]]:
    """The verdicts as they were given, the position after the last correction made, and
    the number of corrections of each kind."""
    rules = load_rules()
    trusted: dict[str, frozenset[str]] = {}
    campaigns: list[ReportedCampaign] = []
    made = [0, 0]
    after = 0
    verdicts = []
    for pos, item in enumerate(items):
        fb = Feedback(trusted=dict(trusted), campaigns=tuple(campaigns))
        v = apply_feedback(rules, item.base, item.msg, fb)
        verdicts.append(v)
        if sum(made) >= limit:
            continue
        flagged = level_at_least(v.risk, min_risk)
        if not item.expected and flagged:
            sender = item.msg.from_.addr.casefold() if item.msg.from_ else ""
            if sender and not item.sent:
                text = frozenset(c for c in v.categories if c in TEXT_CATEGORIES)
                trusted[sender] = trusted.get(sender, frozenset()) | text
            made[0] += 1
            after = pos + 1
        elif item.expected and not flagged:
            day = item.msg.date.date() if item.msg.date else datetime.date.min
            categories = tuple(c for c in CATEGORIES if c in item.expected)
            fp = message_fingerprint(item.msg)
            campaigns.append(ReportedCampaign(fp, day, categories, len(campaigns) + 1))
            made[1] += 1
            after = pos + 1
    return verdicts, after, made


def run_corpus(corpus: str, steps: list[int], min_risk: str) -> list[Line]:
    items = _load(Path(corpus))
    base = [i.base for i in items]
    tail_at = len(items) - round(len(items) * TAIL)
    lines = []
    for n in steps:
        verdicts, after, made = _replay(items, n, min_risk)
        rest = items[after:]
        lines.append(
            Line(
                corpus=corpus,
                n=n,
                made=(made[0], made[1]),
                rest=len(rest),
                rest_fb=_figures(rest, verdicts[after:], min_risk),
                rest_base=_figures(rest, base[after:], min_risk),
                tail_fb=_figures(items[tail_at:], verdicts[tail_at:], min_risk),
            )
        )
    return lines


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}"


def _f(x: float | None) -> str:
    return " n/a" if x is None else f"{x:.3f}"


def print_table(lines: list[Line], min_risk: str) -> None:
    print(
        f"flagged = risk >= {min_risk}; F1 = macro-F1, rec = risky recall %, ham = ham flag rate %"
    )
    head = (
        f"{'corpus':<10} {'N':>3} {'made':>7} {'rest':>4} | "
        f"{'F1':>5} {'rec':>5} {'ham':>5} | {'base F1':>7} {'rec':>5} {'ham':>5} | "
        f"{'tail F1':>7} {'rec':>5} {'ham':>5}"
    )
    print(head)
    print("-" * len(head))
    for ln in lines:
        name = (
            Path(ln.corpus).name
            if Path(ln.corpus).parent.name != "writers"
            else ("writers/" + Path(ln.corpus).name)
        )
        print(
            f"{name:<10} {ln.n:>3} {ln.made[0]:>3}+{ln.made[1]:<3} {ln.rest:>4} | "
            f"{_f(ln.rest_fb[0]):>5} {_pct(ln.rest_fb[1])} {_pct(ln.rest_fb[2])} | "
            f"{_f(ln.rest_base[0]):>7} {_pct(ln.rest_base[1])} {_pct(ln.rest_base[2])} | "
            f"{_f(ln.tail_fb[0]):>7} {_pct(ln.tail_fb[1])} {_pct(ln.tail_fb[2])}"
        )


def fingerprint_cost(directory: Path, limit: int = 500) -> None:
    msgs = []
    for source in iter_sources([directory], on_error=lambda _e: None):
        msgs.append(parse_message(source.raw))
        if len(msgs) >= limit:
            break
    for m in msgs[:20]:
        message_fingerprint(m)  # warm up
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for m in msgs:
            message_fingerprint(m)
        best = min(best, time.perf_counter() - t0)
    chars = sum(len(m.text or m.html_text) for m in msgs)
    print(
        f"message_fingerprint: {len(msgs)} messages of {directory} ({chars // max(len(msgs), 1)} "
        f"body chars on average): {1000 * best / max(len(msgs), 1):.3f} ms per message "
        "(best of 3 rounds)"
    )


def campaign_check(risky: Path, ham: Path, min_risk: str, limit: int = 1000) -> None:
    """Reported campaigns on plain directories: ``risky`` (all risky, e.g. phishing_pot)
    replayed in date order, every message the guard does not flag reported; how many later
    messages only the reports flag; then how many of ``ham``'s first ``limit`` messages are
    similar to any of those reports (false matches)."""
    rules = load_rules()
    msgs = [parse_message(s.raw) for s in iter_sources([risky], on_error=lambda _e: None)]
    msgs.sort(key=lambda m: m.date.timestamp() if m.date else math.inf)
    campaigns: list[ReportedCampaign] = []
    missed = caught = 0
    for msg in msgs:
        base = evaluate(rules, msg)
        if level_at_least(base.risk, min_risk):
            continue
        v = apply_feedback(rules, base, msg, Feedback(campaigns=tuple(campaigns)))
        if level_at_least(v.risk, min_risk):
            caught += 1
            continue
        missed += 1
        day = msg.date.date() if msg.date else datetime.date.min
        campaigns.append(ReportedCampaign(message_fingerprint(msg), day, ()))
    print(
        f"{risky}: {len(msgs)} messages, {missed + caught} not flagged by the rules; "
        f"{missed} reported, {caught} later ones flagged only by a report"
    )
    hams = []
    for source in iter_sources([ham], on_error=lambda _e: None):
        hams.append(parse_message(source.raw))
        if len(hams) >= limit:
            break
    usable = [c for c in campaigns if not c.fingerprint.too_short]
    matched = sum(best_campaign(m, tuple(usable)) is not None for m in hams)
    print(
        f"{ham}: {matched} of {len(hams)} ham messages similar to one of those "
        f"{len(usable)} reports (false matches)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--corpus", action="append", help="a labelled corpus directory (repeatable)")
    ap.add_argument("--steps", default="0,10,25,50", help="numbers of corrections")
    ap.add_argument("--min-risk", default="medium", choices=("low", "medium", "high"))
    ap.add_argument("--jobs", type=int, default=2, help="processes (at most 2)")
    ap.add_argument(
        "--fingerprint-cost", nargs="?", const=str(SHARED / "public" / "ham"), default=None
    )
    ap.add_argument(
        "--campaign-check",
        metavar="RISKY_DIR",
        help="also replay a plain all-risky directory reporting every miss (see campaign_check)",
    )
    ap.add_argument("--ham", default=str(SHARED / "public" / "ham"), help="for --campaign-check")
    args = ap.parse_args(argv)
    corpora = args.corpus or [str(SHARED / "writers" / "a")]
    steps = [int(s) for s in args.steps.split(",")]
    jobs = max(1, min(2, args.jobs))
    started = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(run_corpus, c, steps, args.min_risk) for c in corpora]
        lines = [ln for f in futures for ln in f.result()]
    print_table(lines, args.min_risk)
    print(f"({time.perf_counter() - started:.0f} s, {jobs} processes)")
    if args.fingerprint_cost:
        fingerprint_cost(Path(args.fingerprint_cost))
    if args.campaign_check:
        campaign_check(Path(args.campaign_check), Path(args.ham), args.min_risk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
