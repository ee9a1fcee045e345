"""Issue 16: several ``inbox-guard run`` daemons on one PostgreSQL store.

On a throwaway Dovecot (one user per account, ``--messages`` each) and a throwaway
PostgreSQL (tests/support/servers.py), with real daemons as subprocesses, each with a state
directory of its own (as on separate machines):

a. **Unchanged polls one daemon sustains.** ``--accounts`` mailboxes, first scan done (by
   a daemon run before the measurements), then one daemon per ``--parallel`` value with
   ``poll_interval`` 2 s (the minimum: more polls are due than it can do, so it runs flat
   out) and that ``max_parallel``. After every account has been polled once, a window of
   ``--window`` seconds: polls done (its "scan:" log lines, one per finished poll), its CPU
   (/proc/PID/stat), and the CPU of PostgreSQL and Dovecot (their process trees, children
   they reaped included) over the same window. From that: polls/s, CPU-ms per poll, and
   the accounts one daemon can hold at the default 300 s poll using 70 % of one core
   (polls/s per core x 300 x 0.7).
b. **Takeover after a kill.** Two daemons (default poll 300 s, default ``max_parallel``),
   each owning half the accounts; one is SIGKILLed at a random moment of its lease cycle.
   Times from the kill until every account has an unexpired lease held by the survivor
   (``account_lease``, polled every 0.1 s), until the survivor's first "scan:" line for
   an account it took over, and until it has polled all of them. Then a new daemon is
   started in place of the dead one, they balance again, and the next trial kills one of
   the two. For each ``--leases`` value.

Part a also samples the lease tables (``LeaseWatch``): with one daemon, its heartbeat should
never be older than lease/3 and no lease should lapse; and counts the PostgreSQL sessions
opened per poll (connection-pool churn).

Prints a table (and ``--json FILE`` rows); asserts nothing. ``--quick`` is a smoke run: with
20 mailboxes polled every 2 s the daemon is not saturated, so its polls/s are not a figure.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mailbox_mix
import sqlalchemy as sa
from benchlib import (
    Mailboxes,
    Row,
    guard_command,
    machine,
    median,
    print_rows,
    proc_cpu_s,
    say,
    stop,
    write_rows,
)

DEFAULT_POLL = 300  # [schedule] poll_interval default
CORE_SHARE = 0.7  # of one core, for the capacity figure
SCAN_LINE = re.compile(r"\[(?P<account>[^\]]+)\] scan: ")


# --------------------------------------------------------------------------- daemons


@dataclass
class Daemon:
    """A running ``inbox-guard run``; its stderr lines with the monotonic time read."""

    name: str
    proc: subprocess.Popen[bytes]
    lines: list[tuple[float, str]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def scans(self, since: float = 0.0) -> list[tuple[float, str]]:
        """(time, account) of every finished poll logged at or after ``since``."""
        found = []
        for at, line in list(self.lines):
            match = SCAN_LINE.search(line)
            if match and at >= since:
                found.append((at, match["account"]))
        return found

    def tail(self, n: int = 15) -> str:
        return "\n".join(line for _at, line in self.lines[-n:])


def start_daemon(config: Path, state: Path, name: str) -> Daemon:
    state.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["XDG_STATE_HOME"] = str(state)
    proc = subprocess.Popen(
        [*guard_command(), "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    daemon = Daemon(name, proc)

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            daemon.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    daemon.reader = threading.Thread(target=read, name=f"log:{name}", daemon=True)
    daemon.reader.start()
    return daemon


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, *watch: Daemon) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        for d in watch:
            if d.proc.poll() is not None:
                raise SystemExit(f"daemon {d.name} exited ({d.proc.returncode}):\n{d.tail()}")
        if time.monotonic() > end:
            tails = "\n".join(f"--- {d.name}:\n{d.tail()}" for d in watch)
            raise SystemExit(f"no {what} within {timeout:g} s\n{tails}")
        time.sleep(0.1)


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants, with what each has reaped of its
    finished children (Dovecot's per-login processes, PostgreSQL's backends)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        pid = int(entry.name)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields is None:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        todo.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent not idle (all processes, /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LeaseWatch:
    """Samples, every 0.5 s, how long ago the daemons last renewed (``replica.last_seen``)
    and how many leases have lapsed. With one daemon, a heartbeat older than lease/3 plus
    a little, or any lapsed lease, means its heartbeat did not run when due."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.max_age = 0.0
        self.lapsed_samples = 0
        self.samples = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sql = (
            "SELECT (SELECT coalesce(extract(epoch FROM now() - max(last_seen)), 0) FROM "
            "replica), (SELECT count(*) FROM account_lease WHERE expires_at <= now())"
        )
        while not self.done.wait(0.5):
            try:
                age, lapsed = query(self.engine, sql)[0]
            except sa.exc.SQLAlchemyError:  # the schema is not there yet
                continue
            self.samples += 1
            self.max_age = max(self.max_age, float(age))
            self.lapsed_samples += 1 if lapsed else 0

    def close(self) -> str:
        self.done.set()
        self.thread.join(5)
        self.engine.dispose()
        return (
            f"oldest heartbeat {self.max_age:.1f} s; leases lapsed in {self.lapsed_samples} "
            f"of {self.samples} samples"
        )


# --------------------------------------------------------------------------- setup


@dataclass
class Setup:
    mb: Mailboxes
    postgres: Any
    url: str
    users: dict[str, str]  # account name -> Dovecot user


def build(accounts: int, messages: int) -> Setup:
    from support.servers import Postgres

    mb = Mailboxes()
    postgres = Postgres()
    url = postgres.create_database("replicas")
    users: dict[str, str] = {}
    say(f"seeding {accounts} Dovecot users with {messages} messages each ...")
    box = [raw for folder, raw in mailbox_mix.mailbox(messages * 3) if folder == "INBOX"]
    for i in range(accounts):
        name = f"a{i:04d}"
        users[name] = mb.dovecot.new_user(name)
        start = (i * 7) % max(len(box) - messages, 1)
        mb.dovecot.append_many(users[name], box[start : start + messages])
    return Setup(mb, postgres, url, users)


def write_config(
    setup: Setup, path: Path, *, poll: int, parallel: int | None, lease: int | None
) -> Path:
    lines = [f'[store]\nurl = "{setup.url}"']
    if lease is not None:
        lines.append(f"lease = {lease}")
    lines.append(f"\n[schedule]\npoll_interval = {poll}")
    if parallel is not None:
        lines.append(f"max_parallel = {parallel}")
    for name, user in setup.users.items():
        lines.append(
            f'\n[[account]]\nname = "{name}"\n[account.imap]\nhost = "127.0.0.1"\n'
            f'port = {setup.mb.dovecot.port}\ntls = "starttls"\nusername = "{user}"\n'
            f'password_file = "{setup.mb.password_file}"\nca_file = "{setup.mb.ca_file}"'
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def query(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


def pg_sessions(engine: sa.Engine) -> int:
    """Sessions ever opened on the store's database (PostgreSQL 14+ counts them)."""
    sql = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    return int(query(engine, sql)[0][0])


def first_scan(setup: Setup, rows: list[Row]) -> None:
    config = write_config(
        setup, setup.mb.work / "first.toml", poll=DEFAULT_POLL, parallel=8, lease=None
    )
    say(f"first scan of {len(setup.users)} mailboxes (one daemon, max_parallel 8) ...")
    began = time.monotonic()
    watch = LeaseWatch(setup.url)
    d = start_daemon(config, setup.mb.work / "state-first", "first")
    try:
        wait_until(
            lambda: len({a for _t, a in d.scans()}) >= len(setup.users), 1800, "first scan", d
        )
        took = time.monotonic() - began
    finally:
        leases = watch.close()  # before the stop: it hands the leases back
        stop(d.proc)
    done = sorted(t - began for t, _a in d.scans())
    quarters = [done[min(len(done) - 1, len(done) * q // 4)] for q in (1, 2, 3)] if done else []
    trouble = [line for _t, line in d.lines if " ERROR " in line or " WARNING " in line]
    say(f"    {took:.1f} s; a quarter, half, three quarters done at {quarters}; {leases}")
    for line in trouble[:5]:
        say(f"    {line[:300]}")
    engine = sa.create_engine(setup.url)
    try:
        total = int(query(engine, "SELECT count(*) FROM message")[0][0])
    finally:
        engine.dispose()
    rows.append(
        Row(
            "a",
            f"first scan: {len(setup.users)} mailboxes, {total:,} messages (daemon start included)",
            "-",
            f"{took:.1f} s ({len(trouble)} error/warning lines; {leases})",
        )
    )


# --------------------------------------------------------------------------- a. polls


def sustained(setup: Setup, parallel: int, window: float, rows: list[Row]) -> dict[str, float]:
    k = len(setup.users)
    config = write_config(
        setup, setup.mb.work / f"poll-{parallel}.toml", poll=2, parallel=parallel, lease=None
    )
    say(f"[a] one daemon, poll 2 s, max_parallel {parallel}: warm-up, then {window:.0f} s ...")
    d = start_daemon(config, setup.mb.work / f"state-poll-{parallel}", f"poll-{parallel}")
    try:
        wait_until(lambda: len({a for _t, a in d.scans()}) >= k, 600, "poll of every account", d)
        time.sleep(2.0)
        pg_root = setup.postgres._proc.pid
        dc_root = setup.mb.dovecot._proc.pid
        engine = sa.create_engine(setup.url, poolclass=sa.NullPool)
        sessions0 = pg_sessions(engine)
        watch = LeaseWatch(setup.url)
        t0 = time.monotonic()
        cpu0, pg0, dc0, busy0 = (
            proc_cpu_s(d.proc.pid),
            tree_cpu_s(pg_root),
            tree_cpu_s(dc_root),
            machine_busy_s(),
        )
        time.sleep(window)
        t1 = time.monotonic()
        cpu1, pg1, dc1, busy1 = (
            proc_cpu_s(d.proc.pid),
            tree_cpu_s(pg_root),
            tree_cpu_s(dc_root),
            machine_busy_s(),
        )
        leases = watch.close()
        sessions = pg_sessions(engine) - sessions0 - 1  # our own query's session
        engine.dispose()
        polls = [a for at, a in d.scans(t0) if at < t1]
        errors = sum(1 for at, line in d.lines if t0 <= at < t1 and " ERROR " in line)
        stopped = sum(1 for at, line in d.lines if t0 <= at < t1 and "scan stopped" in line)
    finally:
        stop(d.proc)
    elapsed = t1 - t0
    n = len(polls)
    per_s = n / elapsed
    cpu = cpu1 - cpu0
    cpu_ms = 1000 * cpu / n if n else float("nan")
    core = cpu / elapsed
    # accounts at the default poll if the daemon had 70 % of one core to itself
    per_core = per_s / core if core else float("nan")
    capacity = per_core * DEFAULT_POLL * CORE_SHARE
    info = {
        "parallel": parallel,
        "window_s": elapsed,
        "polls": n,
        "polls_per_s": per_s,
        "daemon_cpu_s": cpu,
        "daemon_core": core,
        "cpu_ms_per_poll": cpu_ms,
        "postgres_cpu_s": pg1 - pg0,
        "dovecot_cpu_s": dc1 - dc0,
        "machine_busy_cores": (busy1 - busy0) / elapsed,
        "pg_sessions_per_poll": sessions / max(n, 1),
        "accounts_polled": len(set(polls)),
        "scans_stopped": stopped,
        "leases": leases,
        "errors": errors,
        "capacity_300s_70pct": capacity,
    }
    say(f"    {info}")
    rows.append(
        Row(
            "a",
            f"unchanged polls, {k} mailboxes, poll 2 s, max_parallel {parallel}",
            "-",
            f"{per_s:.1f} polls/s; daemon {core:.2f} core = {cpu_ms:.1f} CPU-ms/poll; "
            f"per poll also PostgreSQL {1000 * (pg1 - pg0) / max(n, 1):.1f} ms, Dovecot "
            f"{1000 * (dc1 - dc0) / max(n, 1):.1f} ms; machine {info['machine_busy_cores']:.2f} "
            f"of {os.cpu_count()} cores busy; {info['pg_sessions_per_poll']:.2f} new "
            f"PostgreSQL sessions per poll; {errors} errors, {stopped} scans stopped; "
            f"{len(set(polls))} of {k} mailboxes polled; {leases}",
            None,
            info,
        )
    )
    return info


# --------------------------------------------------------------------------- b. takeover


class Pair:
    """Daemons on one lease setting: start them, read who owns what, kill one."""

    def __init__(self, setup: Setup, lease: int) -> None:
        self.setup = setup
        self.lease = lease
        self.k = len(setup.users)
        self.config = write_config(
            setup, setup.mb.work / f"lease-{lease}.toml", poll=DEFAULT_POLL, parallel=None,
            lease=lease,
        )  # fmt: skip
        self.engine = sa.create_engine(setup.url)
        self.started = 0

    def launch(self) -> Daemon:
        self.started += 1
        name = f"lease{self.lease}-{self.started}"
        return start_daemon(self.config, self.setup.mb.work / f"state-{name}", name)

    def owners(self) -> dict[str, str]:
        """account -> replica id, for every unexpired lease."""
        rows = query(
            self.engine, "SELECT account, owner FROM account_lease WHERE expires_at > now()"
        )
        return {a: o for a, o in rows if o}

    @staticmethod
    def replica(d: Daemon) -> str | None:
        """The daemon's replica id, from its "sharing the store ... as ID: owns" line."""
        for _at, line in list(d.lines):
            if "sharing the store with other daemons as " in line:
                return line.split("daemons as ", 1)[1].rsplit(": owns", 1)[0]
        return None

    def balanced(self, group: Sequence[Daemon]) -> bool:
        ids = [self.replica(d) for d in group]
        if None in ids:
            return False
        got = self.owners()
        counts = sorted(sum(1 for o in got.values() if o == ident) for ident in ids)
        return len(got) == self.k and counts == [self.k // 2, self.k - self.k // 2]

    def all_owned_by(self, d: Daemon) -> bool:
        got = self.owners()
        return len(got) == self.k and set(got.values()) == {self.replica(d)}

    def kill_one(self, group: list[Daemon], rng: random.Random) -> tuple[Daemon, dict[str, float]]:
        """Wait for balance, SIGKILL one at a random moment of the lease cycle; the
        survivor and the times measured."""
        k, lease = self.k, self.lease
        wait_until(lambda: self.balanced(group), 20 * lease + 60, "balanced ownership", *group)
        # every account polled once since the start (so the next scan is a takeover's)
        polled = lambda: len({a for d in group for _t, a in d.scans()}) >= k  # noqa: E731
        wait_until(polled, 600, "first polls", *group)
        time.sleep(rng.uniform(0, lease / 3))
        victim, survivor = rng.sample(group, 2)
        ident = self.replica(victim)
        theirs = {a for a, o in self.owners().items() if o == ident}
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.proc.wait(10)
        wait_until(lambda: self.all_owned_by(survivor), 4 * lease + 30, "takeover", survivor)
        owned = time.monotonic() - killed
        done = lambda: {a for _t, a in survivor.scans(killed)} >= theirs  # noqa: E731
        wait_until(done, 600, "scans of the taken-over mailboxes", survivor)
        scans = [(t, a) for t, a in survivor.scans(killed) if a in theirs]
        first = min(t for t, _a in scans) - killed
        last = max(min(t for t, a in scans if a == acct) for acct in theirs) - killed
        result = {
            "taken_over": float(len(theirs)),
            "owned_s": owned,
            "first_scan_s": first,
            "all_scanned_s": last,
        }
        return survivor, result


def takeover(setup: Setup, lease: int, trials: int, rng: random.Random, rows: list[Row]) -> None:
    say(f"[b] two daemons, lease {lease} s, {trials} kill(s) ...")
    pair = Pair(setup, lease)
    group = [pair.launch(), pair.launch()]
    results: list[dict[str, float]] = []
    try:
        for trial in range(trials):
            survivor, result = pair.kill_one(group, rng)
            say(f"    trial {trial + 1}: {result}")
            results.append(result)
            group = [survivor, pair.launch()]  # a machine back in place of the dead one
    finally:
        for d in group:
            stop(d.proc)
        pair.engine.dispose()
    med = {key: median(r[key] for r in results) for key in results[0]}
    worst = {key: max(r[key] for r in results) for key in results[0]}
    rows.append(
        Row(
            "b",
            f"takeover after SIGKILL, lease {lease} s ({len(results)} kills, "
            f"{med['taken_over']:.0f} of {pair.k} mailboxes each)",
            f"<= {lease * 4 / 3:.0f} s (lease + lease/3)",
            f"all owned by the survivor: median {med['owned_s']:.1f} s (max "
            f"{worst['owned_s']:.1f}); its first scan of one: {med['first_scan_s']:.1f} s "
            f"(max {worst['first_scan_s']:.1f}); all scanned: {med['all_scanned_s']:.1f} s "
            f"(max {worst['all_scanned_s']:.1f})",
            None,
            {"trials": results},
        )
    )


# --------------------------------------------------------------------------- main


def arithmetic(polls: Sequence[dict[str, float]], rows: list[Row], mailboxes: int = 10_000) -> None:
    """Mailboxes per daemon at the default poll, and daemons for ``mailboxes`` with one
    spare: from the polls/s measured (what this machine showed, Dovecot and PostgreSQL on
    the same 2 cores), and from the daemon's CPU per poll (what one core of its own would
    give, if nothing else limits it)."""
    seen = max(polls, key=lambda info: info["polls_per_s"])
    measured = seen["polls_per_s"] * DEFAULT_POLL * CORE_SHARE
    lean = min(polls, key=lambda info: info["cpu_ms_per_poll"])
    per_core = 1000 / lean["cpu_ms_per_poll"] * DEFAULT_POLL * CORE_SHARE
    for label, per_daemon, how in (
        (
            "as measured",
            measured,
            f"{seen['polls_per_s']:.1f} polls/s (max_parallel {seen['parallel']:.0f}) "
            f"x {DEFAULT_POLL} s x {CORE_SHARE}",
        ),
        (
            "per core of its own",
            per_core,
            f"1000 / {lean['cpu_ms_per_poll']:.1f} CPU-ms per poll (max_parallel "
            f"{lean['parallel']:.0f}) x {DEFAULT_POLL} s x {CORE_SHARE}",
        ),
    ):
        needed = math.ceil(mailboxes / per_daemon)
        rows.append(
            Row(
                "=",
                f"mailboxes per daemon at the {DEFAULT_POLL} s poll, {label}",
                "-",
                f"{how} = {per_daemon:,.0f}; {mailboxes:,} mailboxes: {needed} daemon(s), "
                f"{needed + 1} with one down",
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run at small sizes")
    parser.add_argument("--accounts", type=int, default=None, help="Dovecot users (200)")
    parser.add_argument("--messages", type=int, default=None, help="messages each (20)")
    parser.add_argument("--window", type=float, default=None, help="seconds measured (60)")
    parser.add_argument("--parallel", default=None, help="max_parallel values (2,4,8)")
    parser.add_argument("--leases", default=None, help="lease values for b (30,10)")
    parser.add_argument("--trials", type=int, default=None, help="kills per lease (3)")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--skip", default="", help="'a' or 'b' to leave a part out")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    quick = args.quick
    accounts = args.accounts or (20 if quick else 200)
    messages = args.messages or (5 if quick else 20)
    window = args.window or (10.0 if quick else 60.0)
    parallels = [int(p) for p in (args.parallel or ("2,8" if quick else "2,4,8")).split(",")]
    leases = [int(s) for s in (args.leases or ("10" if quick else "30,10")).split(",")]
    trials = args.trials or (1 if quick else 3)
    rng = random.Random(args.seed)

    rows: list[Row] = []
    say(machine())
    setup = build(accounts, messages)
    try:
        first_scan(setup, rows)
        polls = []
        if "a" not in args.skip:
            polls = [sustained(setup, p, window, rows) for p in parallels]
        if "b" not in args.skip:
            for lease in leases:
                takeover(setup, lease, trials, rng, rows)
        if polls:
            arithmetic(polls, rows)
    finally:
        setup.postgres.close()
        setup.mb.close()
    print(machine())
    print_rows(rows)
    write_rows(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
