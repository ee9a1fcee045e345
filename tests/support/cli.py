"""The real ``inbox-guard`` command in a subprocess, as a user or systemd runs it.

:func:`run_cli` runs one command to its end and returns the completed process;
:class:`Daemon` is ``inbox-guard run`` in the background with its log collected line by
line (the ``daemons`` fixture of ``tests/conftest.py`` starts them and kills what a test
left running). ``env`` adds variables to the inherited environment (``None`` removes one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from support.closing import Closing

CLI: tuple[str, ...] = (sys.executable, "-m", "guard")
Env = Mapping[str, str | None]


def environment(env: Env | None) -> dict[str, str]:
    """The inherited environment with ``env`` applied (a ``None`` value removes the name)."""
    out = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def run_cli(
    *args: str | Path,
    command: Sequence[str] = CLI,
    cwd: Path | None = None,
    env: Env | None = None,
    timeout: float = 300,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``command args`` to its end, capturing its output as text (undecodable bytes
    kept as surrogates); ``check``: fail the test unless it exits 0."""
    proc = subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env=environment(env),
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",
        timeout=timeout,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return proc


class Daemon(Closing):
    """``inbox-guard run --config config`` as a subprocess, its stderr collected line by line."""

    def __init__(
        self, config: Path, *, env: Env | None = None, command: Sequence[str] = CLI
    ) -> None:
        self.lines: list[str] = []
        self.stop_seconds: float | None = None  # how long the last stop() took
        self.proc = subprocess.Popen(
            [*command, "run", "--config", str(config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=environment(env),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) before {what}; log:\n{self.log}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} within {timeout:g} s; log:\n" + "\n".join(self.lines[-40:])
                )
            time.sleep(0.05)

    def wait_log(self, text: str, timeout: float = 30.0, after: int = 0) -> int:
        """Index of the first log line from ``after`` on that contains ``text``."""
        found: list[int] = []

        def seen() -> bool:
            for i in range(after, len(self.lines)):
                if text in self.lines[i]:
                    found.append(i)
                    return True
            return False

        self.wait_for(seen, timeout, repr(text) + " in the log")
        return found[0]

    def count(self, text: str) -> int:
        return sum(1 for line in list(self.lines) if text in line)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit; its status (``stop_seconds``: how long)."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.stop_seconds = time.monotonic() - started
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)

    def close(self) -> None:
        """Kill it if it still runs (what a test did not stop)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
