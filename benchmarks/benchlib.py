"""Shared pieces of the benchmarks: result rows, measured subprocesses, throwaway mailboxes.

A benchmark script collects :class:`Row` objects (figure / target / result, whether the
target is met) and prints them with :func:`print_rows`; with ``--json FILE`` it also writes
them for ``run.py``, which gathers every script's rows into one table.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SHARED_HAM = REPO.parent / "shared" / "corpus" / "public" / "ham"

if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # tests/support/servers.py: the Dovecot helper


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the results table. ``met`` is None for a figure without a target."""

    bench: str
    figure: str
    target: str
    result: str
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "-"}[self.met]


def print_rows(rows: Sequence[Row], out: TextIO | None = None) -> None:
    stream = out if out is not None else sys.stdout
    width = max([len(r.figure) for r in rows] + [6])
    twidth = max([len(r.target) for r in rows] + [6])
    print(f"{'#':<3} {'figure':<{width}}  {'target':<{twidth}}  {'result'}", file=stream)
    for r in rows:
        print(
            f"{r.bench:<3} {r.figure:<{width}}  {r.target:<{twidth}}  {r.result}  [{r.verdict}]",
            file=stream,
        )


def write_rows(rows: Sequence[Row], path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")


def read_rows(path: Path) -> list[Row]:
    return [Row(**item) for item in json.loads(path.read_text())]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


@dataclass
class Measured:
    """A finished subprocess: wall time, its own peak RSS and CPU (``wait4``), output."""

    returncode: int
    wall_s: float
    maxrss_mb: float
    cpu_s: float
    stdout: str
    stderr: str


def guard_command() -> list[str]:
    """The installed ``inbox-guard`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "inbox-guard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "guard"]


def run_measured(command: Sequence[str], timeout: float = 600.0) -> Measured:
    """Run ``command`` and measure it with ``os.wait4`` on its pid: the rusage is that
    process's own (and its waited-for children's), not the whole harness's."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        killer = threading.Timer(timeout, proc.kill)  # a hung command must not hang us
        killer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            returncode=proc.returncode,
            wall_s=wall,
            maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            cpu_s=usage.ru_utime + usage.ru_stime,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int | str = "self", key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return float("nan")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def machine() -> str:
    """``2 x AMD EPYC, 23.5 GiB, Linux 6.x, Python 3.11.7`` for the README."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = proc_meminfo_gib()
    except OSError:
        mem = 0.0
    return (
        f"{os.cpu_count()} x {model}, {mem:.1f} GiB RAM, Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}"
    )


def proc_meminfo_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


# --------------------------------------------------------------------------- mailboxes


@dataclass
class Account:
    """One Dovecot user with an inbox-guard configuration and store of its own."""

    user: str
    dir: Path
    config: Path
    db: Path


MAIL_FORMATS = ("maildir", "mdbox", "sdbox")


def _dovecot(mail_format: str) -> Any:
    """tests/support's Dovecot, with another mailbox format than its Maildir if asked."""
    from support.servers import Dovecot

    if mail_format == "maildir":
        return Dovecot(password="bench-password")
    if mail_format not in MAIL_FORMATS:
        raise ValueError(f"mail format must be one of {MAIL_FORMATS}")

    class OtherFormat(Dovecot):
        def _write_conf(self) -> None:
            super()._write_conf()
            text = self.conf.read_text()
            maildir = "mail_location = maildir:~/Maildir"
            if maildir not in text:
                raise RuntimeError(f"no {maildir!r} in {self.conf}: cannot switch formats")
            self.conf.write_text(text.replace(maildir, f"mail_location = {mail_format}:~/mail"))

    return OtherFormat(password="bench-password")


class Mailboxes:
    """A throwaway Dovecot (mail store on /dev/shm) and a work dir for configs and stores."""

    def __init__(self, mail_format: str = "maildir") -> None:
        self.mail_format = mail_format
        self.dovecot = _dovecot(mail_format)
        self.work = Path(tempfile.mkdtemp(prefix="inbox-guard-bench-"))
        self.password_file = self.work / "imap-password"
        self.password_file.write_text(self.dovecot.password + "\n")
        self.password_file.chmod(0o600)
        self.ca_file = self.work / "ca.pem"
        shutil.copy(self.dovecot.ca_file, self.ca_file)

    def close(self) -> None:
        self.dovecot.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Mailboxes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def account(
        self,
        name: str,
        messages: Sequence[tuple[str, bytes]],
        poll_interval: int = 300,
        idle: bool = False,
    ) -> Account:
        """A new user holding ``messages`` (MULTIAPPEND, per folder in order), with a
        configuration whose store is a fresh SQLite file in the work dir."""
        user = self.dovecot.new_user(name)
        by_folder: dict[str, list[bytes]] = {}
        for folder, raw in messages:
            by_folder.setdefault(folder, []).append(raw)
        for folder, raws in by_folder.items():
            self.dovecot.append_many(user, raws, mailbox=folder)
        home = self.work / user
        home.mkdir(mode=0o700)
        return self.configure(user, home, poll_interval, idle)

    def configure(self, user: str, home: Path, poll_interval: int, idle: bool) -> Account:
        db = home / "guard.sqlite3"
        config = home / "config.toml"
        config.write_text(
            f"""# written by benchmarks/benchlib.py
[imap]
host = "127.0.0.1"
port = {self.dovecot.port}
tls = "starttls"
username = "{user}"
password_file = "{self.password_file}"
ca_file = "{self.ca_file}"

[store]
url = "sqlite:///{db}"

[schedule]
poll_interval = {poll_interval}
idle = {"true" if idle else "false"}
"""
        )
        return Account(user=user, dir=home, config=config, db=db)

    def clone(self, account: Account, name: str, poll_interval: int, idle: bool) -> Account:
        """Another configuration for the same mailbox with a copy of its store (SQLite
        backup API: consistent even with a WAL)."""
        home = self.work / f"{account.user}-{name}"
        home.mkdir(mode=0o700)
        clone = self.configure(account.user, home, poll_interval, idle)
        src = sqlite3.connect(account.db)
        dst = sqlite3.connect(clone.db)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        clone.db.chmod(0o600)
        return clone

    def append(self, account: Account, raws: Sequence[bytes], folder: str = "INBOX") -> None:
        self.dovecot.append_many(account.user, raws, mailbox=folder)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> resource.struct_rusage | None:
    """SIGTERM a process we started and reap it; its rusage, or None if already reaped."""
    if proc.returncode is not None:
        return None
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        time.sleep(0.05)
    proc.kill()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage
