"""All the benchmarks of issue 6, one table: ``make bench`` (``ARGS=...`` for options).

    .venv/bin/python benchmarks/run.py [--quick] [--shared-corpus | --corpus DIR]
        [--mail-format maildir|mdbox|sdbox] [--write-readme] [--only 1,2,5]

Runs, each in a process of its own (their progress goes to stderr):
  1. ``check_throughput.py``  parse + policy vs bare mail-parser, in memory;
  2-4. ``mailbox_scale.py``   first scan, scale of cost and daemon cost on a real Dovecot;
  2x. ``parallel_parse.py``   experiment: parse + policy in a process pool;
  5. ``sqlite_digest.py``     the digest's queries over 100,000 stored messages;
then prints figure / target / result for all of them. ``--write-readme`` also puts the
table, the date and the machine into benchmarks/README.md (between the results markers).
``--quick`` runs everything at a fraction of the size (a smoke test, ~1.5 min); the
numbers are then not the issue's figures. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import BENCH_DIR, MAIL_FORMATS, SHARED_HAM, Row, machine, print_rows, read_rows, say

README = BENCH_DIR / "README.md"
START_MARK = "<!-- results:start -->"
END_MARK = "<!-- results:end -->"
CHECK_TARGET = 0.75


def _run(command: Sequence[str], timeout: float) -> str:
    """Run a benchmark script; its stderr (progress) passes through, stdout is returned."""
    say("$ " + " ".join(Path(c).name if i == 1 else c for i, c in enumerate(command)))
    result = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        say(f"  failed with status {result.returncode}")
    return result.stdout


def check_throughput(corpus: Path | None, quick: bool) -> list[Row]:
    command = [sys.executable, str(BENCH_DIR / "check_throughput.py")]
    if corpus is not None:
        command += ["--corpus", str(corpus)]
    if quick:
        command += ["--messages", "500", "--rounds", "2"]
    out = _run(command, timeout=900)
    sys.stderr.write(out)
    bare = re.search(r"^\(a\)[^\n]*?\s(\d+)\s+[\d.]+\s*$", out, re.M)
    guard = re.search(r"^\(b\)[^\n]*?\s(\d+)\s+[\d.]+\s*$", out, re.M)
    ratio = re.search(r"^ratio b/a\s+([\d.]+)", out, re.M)
    origin = re.search(r"^messages:\s*(.*)$", out, re.M)
    if not (bare and guard and ratio):
        return [
            Row("1", "check throughput: parse+policy / bare mail-parser", ">= 0.75", "no result")
        ]
    value = float(ratio.group(1))
    return [
        Row(
            "1",
            "check throughput: parse+policy / bare mail-parser (msg/s)",
            f">= {CHECK_TARGET}",
            f"{value:.2f} ({guard.group(1)} vs {bare.group(1)} msg/s; "
            f"{origin.group(1) if origin else '?'})",
            value >= CHECK_TARGET,
        )
    ]


def _rows_from(script: str, args: Sequence[str], timeout: float) -> list[Row]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        printed = _run(
            [sys.executable, str(BENCH_DIR / script), *args, "--json", out.name], timeout
        )
        sys.stderr.write(printed)
        try:
            return read_rows(Path(out.name))
        except (OSError, ValueError):
            return [Row("?", f"{script}", "-", "failed: see its output above")]


def _markdown(rows: Sequence[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("<=", "≤").replace(">=", "≥")

    lines = ["| # | figure | target | result | met |", "|---|---|---|---|---|"]
    for r in rows:
        figure = cell(r.figure.strip())
        if r.figure.startswith("  "):
            figure = "↳ " + figure
        lines.append(
            f"| {r.bench} | {figure} | {cell(r.target)} | {cell(r.result)} | {r.verdict} |"
        )
    return "\n".join(lines)


def write_readme(rows: Sequence[Row], header: str) -> None:
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{START_MARK}\n{END_MARK}\n"
    if START_MARK not in text or END_MARK not in text:
        text = text.rstrip() + f"\n\n{START_MARK}\n{END_MARK}\n"
    before, _, rest = text.partition(START_MARK)
    _, _, after = rest.partition(END_MARK)
    block = f"{START_MARK}\n{header}\n\n{_markdown(rows)}\n{END_MARK}"
    README.write_text(before + block + after)
    say(f"wrote the table to {README}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--corpus", type=Path, help="real ham (.eml) for benchmarks 1 and 2-4")
    parser.add_argument(
        "--shared-corpus", action="store_true", help=f"--corpus {SHARED_HAM} (when present)"
    )
    parser.add_argument("--mail-format", choices=MAIL_FORMATS, default="maildir")
    parser.add_argument("--only", default="1,2,3,4,5", help="which benchmarks (default all)")
    parser.add_argument("--write-readme", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args(argv)

    corpus = args.corpus or (SHARED_HAM if args.shared_corpus else None)
    if corpus is not None and not corpus.is_dir():
        say(f"no corpus at {corpus}: generated mail only")
        corpus = None
    only = set(args.only.split(","))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    if "1" in only:
        rows += check_throughput(corpus, args.quick)
    if only & {"2", "3", "4"}:
        extra = ["--mail-format", args.mail_format]
        if corpus is not None:
            extra += ["--corpus", str(corpus)]
        if args.quick:
            extra += ["--messages", "4000", "--small", "400", "--idle-seconds", "10"]
            extra += ["--cycles", "20", "--pickup-rounds", "3"]
        if "4" not in only:
            extra.append("--no-daemon")
        rows += _rows_from("mailbox_scale.py", extra, timeout=1200)
    if "2" in only:
        size = ["--messages", "2000"] if args.quick else []
        rows += _rows_from("parallel_parse.py", size, timeout=600)
    if "5" in only:
        size = ["--messages", "20000", "--runs", "5"] if args.quick else []
        rows += _rows_from("sqlite_digest.py", size, timeout=600)
    order = {"1": 0, "2": 1, "2x": 2, "3": 3, "4": 4, "5": 5}
    rows.sort(key=lambda r: order.get(r.bench, 9))
    took = time.monotonic() - started
    load_after = os.getloadavg()[0]
    header = (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; "
        f"{'QUICK (reduced sizes) ' if args.quick else ''}`make bench` took {took / 60:.1f} min; "
        f"Dovecot {args.mail_format} on /dev/shm; mail: "
        f"{'generated + real ham from ' + str(corpus) if corpus else 'generated'}; "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after."
    )
    print()
    print(header)
    print()
    print_rows(rows)
    missed = [r for r in rows if r.met is False]
    print(f"\n{sum(r.met is True for r in rows)} targets met, {len(missed)} missed.")
    if args.write_readme:
        write_readme(rows, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
