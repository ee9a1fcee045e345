"""Experiment for benchmark 2: would a process pool for parse + policy pay on this machine?

    .venv/bin/python benchmarks/parallel_parse.py [--messages 10000] [--json FILE]

``guard.mail.parse_message`` + ``guard.policy.evaluate`` is the largest share of a first
scan. This measures, on the benchmark mailbox mix, what moving it into worker processes
could gain, without changing ``guard/``:

1. in memory: the messages judged in this process, then by a pool of 2 workers
   (forkserver, rules loaded once per worker, chunks of 100), results (Message, Verdict)
   sent back pickled as a scan would need them;
2. against Dovecot: fetch (``BODY.PEEK[]``, batches of 200) + parse + policy in one process,
   then with the batch judged by the pool while the next batch is fetched (a pipeline),
   the Message sent back without its body text (the store keeps headers and verdicts).

Pool start-up is reported separately. Rates in messages/s; no assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import os
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mailbox_mix
from benchlib import Mailboxes, Row, print_rows, proc_cpu_s, say, write_rows

_RULES: Any = None


def _init() -> None:
    global _RULES
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)
    from guard.policy import load_rules

    _RULES = load_rules()


def judge(raw: bytes) -> tuple[Any, Any]:
    from guard.mail import parse_message
    from guard.policy import evaluate

    msg = parse_message(raw)
    return msg, evaluate(_RULES, msg)


def judge_compact(raw: bytes) -> tuple[Any, Any]:
    msg, verdict = judge(raw)
    return dataclasses.replace(msg, text="", html_text="", links=()), verdict


def judge_batch(raws: list[bytes]) -> list[tuple[Any, Any]]:
    return [judge_compact(raw) for raw in raws]


def _pool(workers: int) -> tuple[Pool, float]:
    start = time.perf_counter()
    pool = multiprocessing.get_context("forkserver").Pool(workers, initializer=_init)
    pool.map(len, [b"x"] * workers * 4)  # wait until every worker is up
    return pool, time.perf_counter() - start


def _workers_cpu(pool: Pool) -> float:
    """CPU seconds used so far by the pool's worker processes (not our children: forkserver)."""
    workers: list[Any] = getattr(pool, "_pool", [])
    return sum(proc_cpu_s(w.pid) for w in workers if w.pid is not None)


def in_memory(raws: Sequence[bytes], workers: int) -> dict[str, float]:
    _init()
    for raw in raws[:200]:  # warm up: lazily compiled patterns, caches
        judge(raw)
    start, cpu = time.perf_counter(), time.process_time()
    for raw in raws:
        judge(raw)
    serial = time.perf_counter() - start
    serial_cpu = time.process_time() - cpu
    pool, startup = _pool(workers)
    with pool:
        for _ in pool.imap(judge, raws[: 200 * workers], chunksize=100):
            pass
        start, cpu, wcpu = time.perf_counter(), time.process_time(), _workers_cpu(pool)
        for _ in pool.imap(judge, raws, chunksize=100):
            pass
        parallel = time.perf_counter() - start
        parallel_cpu = time.process_time() - cpu + _workers_cpu(pool) - wcpu
    return {
        "serial_s": serial,
        "parallel_s": parallel,
        "startup_s": startup,
        "serial_cpu_s": serial_cpu,
        "parallel_cpu_s": parallel_cpu,
    }


def _client(mb: Mailboxes, user: str) -> Any:
    from imapclient import IMAPClient

    client = IMAPClient("127.0.0.1", port=mb.dovecot.port, ssl=False, timeout=60)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.starttls(ssl.create_default_context(cafile=str(mb.ca_file)))
    client.login(user, mb.dovecot.password)
    client.select_folder("INBOX", readonly=True)
    return client


def _bodies(client: Any, uids: list[int]) -> list[bytes]:
    got = client.fetch(uids, [b"BODY.PEEK[]"])
    return [got[u][b"BODY[]"] for u in uids if u in got]


def pipeline(mb: Mailboxes, user: str, workers: int, batch: int = 200) -> dict[str, float]:
    _init()
    client = _client(mb, user)
    try:
        uids = sorted(int(u) for u in client.search("ALL"))
        batches = [uids[i : i + batch] for i in range(0, len(uids), batch)]
        start = time.perf_counter()
        for b in batches:
            for raw in _bodies(client, b):
                judge_compact(raw)
        serial = time.perf_counter() - start
        pool, _startup = _pool(workers)
        with pool:
            start = time.perf_counter()
            pending: deque[AsyncResult[list[list[tuple[Any, Any]]]]] = deque()
            for b in batches:
                raws = _bodies(client, b)  # fetched while the pool judges earlier batches
                size = max(1, len(raws) // workers)
                chunks = [raws[i : i + size] for i in range(0, len(raws), size)]
                pending.append(pool.map_async(judge_batch, chunks))
                while len(pending) > 2:  # at most two batches in flight, as a scan could
                    pending.popleft().get()
            while pending:
                pending.popleft().get()
            parallel = time.perf_counter() - start
    finally:
        client.logout()
    return {"serial_s": serial, "parallel_s": parallel, "messages": float(len(uids))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here (for run.py)")
    args = parser.parse_args(argv)

    box = mailbox_mix.mailbox(args.messages)
    inbox = [raw for folder, raw in box if folder == "INBOX"]
    rows: list[Row] = []
    cores = os.cpu_count() or 1
    say(f"[2x] parse + policy of {len(inbox)} messages in 1 process and in {args.workers} ...")
    mem = in_memory(inbox, args.workers)
    n = len(inbox)
    rows.append(
        Row(
            "2x",
            f"parse+policy, in memory: 1 process vs pool of {args.workers} ({cores} cores)",
            "-",
            f"speed {mem['serial_s'] / mem['parallel_s']:.2f}x ({n / mem['serial_s']:.0f} -> "
            f"{n / mem['parallel_s']:.0f} msg/s; pool start-up {mem['startup_s']:.2f} s; "
            f"CPU {mem['serial_cpu_s']:.1f} -> {mem['parallel_cpu_s']:.1f} s)",
            None,
            mem,
        )
    )
    with Mailboxes() as mb:
        account = mb.account("pool", [("INBOX", raw) for raw in inbox])
        say("[2x] fetch + parse + policy from Dovecot: serial vs pipelined pool ...")
        pipe = pipeline(mb, account.user, args.workers)
    rows.append(
        Row(
            "2x",
            "fetch+parse+policy from Dovecot: serial vs fetch overlapped with pool",
            "-",
            f"speed {pipe['serial_s'] / pipe['parallel_s']:.2f}x ({n / pipe['serial_s']:.0f} -> "
            f"{n / pipe['parallel_s']:.0f} msg/s)",
            None,
            pipe,
        )
    )
    print_rows(rows)
    write_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
