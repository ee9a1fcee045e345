"""In-process scans for the mailbox benchmarks, run in a process of their own.

    python benchmarks/scan_worker.py polls --config C [--cycles 100]
    python benchmarks/scan_worker.py breakdown --config C

``polls``: ``guard.service.scan.scan`` called ``--cycles`` times in one process against a mailbox
that does not change: the time of each call (connect, STARTTLS, login, STATUS per folder,
store look-ups, logout: the whole poll, without Python start-up) and the CPU time this
process used in it (the guard's own work; the rest is waiting for Dovecot), the IMAP and
FETCH commands of a call (from the ScanSummary), and the process's RSS and Python's
allocated block count after cycles 1, 10 and the last (a leak shows as growth).

``breakdown``: one scan of a mailbox not yet scanned, with timers wrapped around the
guard's own functions (nothing in ``guard/`` is changed): where the first-scan time goes,
as exclusive seconds per phase (IMAP FETCH, parse, policy, threading, store, labels...).

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import proc_rss_mb


def _open(config_path: Path) -> tuple[Any, Any, Any]:
    from guard.config import load_config
    from guard.policy import load_rules
    from guard.service.scan import ScanSettings
    from guard.store import Store

    logging.getLogger("mailparser").setLevel(logging.CRITICAL)
    config = load_config(config_path)
    return (
        ScanSettings.from_config(config),
        Store(config.store.url),
        load_rules(list(config.policy.rules)),
    )


def polls(config_path: Path, cycles: int) -> dict[str, Any]:
    from guard.service.scan import scan

    settings, store, rules = _open(config_path)
    times: list[float] = []
    cpu: list[float] = []
    marks: dict[str, dict[str, float]] = {}
    commands: list[int] = []
    fetches: list[int] = []
    new = 0
    for i in range(1, cycles + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        summary = scan(settings, store, rules)
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
        commands.append(summary.commands)
        fetches.append(summary.fetch_commands)
        new += summary.new_messages
        if i in (1, min(10, cycles), 100, 1000, 10000, cycles):
            gc.collect()
            marks[str(i)] = {"rss_mb": proc_rss_mb(), "blocks": sys.getallocatedblocks()}
    store.close()
    return {
        "cycles": cycles,
        "times_ms": [round(t, 2) for t in times],
        "cpu_ms": [round(t, 2) for t in cpu],
        "commands": max(commands),
        "fetch_commands": max(fetches),
        "new_messages": new,
        "marks": marks,
    }


class _Phases:
    """Exclusive time per phase: a wrapped call's time minus that of wrapped calls
    inside it, so the phases add up to the scan's time (plus what is not wrapped)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []

    def _enter(self) -> float:
        self._stack.append([0.0])
        return time.perf_counter()

    def _leave(self, phase: str, start: float) -> None:
        elapsed = time.perf_counter() - start
        inner = self._stack.pop()[0]
        self.seconds[phase] += elapsed - inner
        self.calls[phase] += 1
        if self._stack:
            self._stack[-1][0] += elapsed

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self._enter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._leave(phase, start)

        return timed

    def wrap_generator(self, phase: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            inner = fn(*args, **kwargs)
            while True:
                start = self._enter()
                try:
                    item = next(inner)
                except StopIteration:
                    return
                finally:
                    self._leave(phase, start)
                yield item

        return timed


def breakdown(config_path: Path) -> dict[str, Any]:
    import sqlmodel

    import guard.mailbox.imap as imap
    import guard.mailbox.threads as threads_mod
    import guard.service.labelling as labelling_mod
    import guard.service.recording as recording_mod
    import guard.service.scan as scan_mod
    import guard.store as st

    phases = _Phases()
    patches: Sequence[tuple[Any, str, str]] = (
        (recording_mod, "parse_message", "parse (guard.mail.parse_message)"),
        (recording_mod, "evaluate", "policy (guard.policy.evaluate)"),
        (threads_mod, "assign_batch", "threading (threads.assign_batch)"),
        (labelling_mod.Labeller, "update_threads", "thread rows (Labeller.update_threads)"),
        (recording_mod.Recorder, "new_row", "message row objects (Recorder.new_row)"),
        (scan_mod._Scanner, "scan_batch", "rest of scan_batch (hashes, findings, loop)"),
        (labelling_mod.Labeller, "write_labels", "labels: store side (write_labels, apply)"),
        (labelling_mod.Labeller, "keep_evidence", "evidence (keep_evidence)"),
        (scan_mod._Scanner, "scan_folder", "folder loop, state (scan_folder)"),
        (imap.Connection, "add_keywords", "labels: IMAP STORE/COPY/LIST"),
        (imap.Connection, "copy", "labels: IMAP STORE/COPY/LIST"),
        (imap.Connection, "ensure_folder", "labels: IMAP STORE/COPY/LIST"),
        (imap.Connection, "folder_exists", "labels: IMAP STORE/COPY/LIST"),
        (imap.Connection, "open", "connect + login"),
        (imap.Connection, "uids_after", "IMAP SEARCH/STATUS/SELECT"),
        (imap.Connection, "select", "IMAP SEARCH/STATUS/SELECT"),
        (imap.Connection, "status", "IMAP SEARCH/STATUS/SELECT"),
        (st, "pending_labels", "store.pending_labels (full folder scan)"),
        (sqlmodel.Session, "get", "one-row ORM look-ups (Session.get)"),
        (sqlmodel.Session, "commit", "SQLite commit (flush + INSERTs)"),
        (sqlmodel.Session, "flush", "SQLite flush (INSERTs)"),
    )
    for owner, name, phase in patches:
        setattr(owner, name, phases.wrap(phase, getattr(owner, name)))
    imap.Connection.fetch = phases.wrap_generator(  # type: ignore[method-assign]
        "IMAP FETCH (meta + BODY.PEEK[])", imap.Connection.fetch
    )
    settings, store, rules = _open(config_path)
    start = time.perf_counter()
    summary = scan_mod.scan(settings, store, rules)
    total = time.perf_counter() - start
    store.close()
    accounted = sum(phases.seconds.values())
    seconds = dict(sorted(phases.seconds.items(), key=lambda kv: -kv[1]))
    seconds["not wrapped"] = total - accounted
    return {
        "messages": summary.new_messages,
        "risky": summary.risky,
        "labelled": summary.labelled,
        "total_s": round(total, 3),
        "phases_s": {k: round(v, 3) for k, v in seconds.items()},
        "calls": dict(phases.calls),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("polls", "breakdown"))
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args(argv)
    result = polls(args.config, args.cycles) if args.mode == "polls" else breakdown(args.config)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
