"""The ``inbox-guard`` command line (a thin layer: parse, call, print).

Commands: ``check`` (verdicts for message files, text or JSON Lines), ``eval``
(precision/recall of the rules on a labelled corpus), ``scan`` (one poll cycle of the
mailbox), ``findings`` (what the store holds), ``run`` (the service), ``digest``,
``doctor`` (checks every link), ``export`` / ``verify`` (dispute evidence bundles),
``feedback`` (what the user marked safe or reported, and undoing it), ``setup`` (a
guided, checked configuration of a mailbox).
The commands only parse arguments and print; the work is in the modules they call.

Exit status: 0 on success, 1 when the work failed (a server, the store, an engine bug), 2
on bad input, configuration or usage, with a one-line ``inbox-guard: error: ...`` on
stderr naming what was wrong.
Everything a message contains is untrusted: it never reaches rich markup, and control,
format (bidi, zero-width) and other invisible characters are shown as escapes.

The top layer: may import every package of ``guard``; nothing imports it but
``guard.__main__`` (checked by ``tests/unit/test_layers.py``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import typer

from guard.cli.common import _USAGE_ERRORS, PROG, Fail, app, error

# The command modules register their commands on ``app`` when imported, in the order the
# help lists them.
for _commands in ("judging", "service", "records", "evidence", "feedback", "setup"):
    importlib.import_module(f"guard.cli.{_commands}")

# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns (and, when run as a script, exits with) the status."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:  # never die on a character the terminal cannot show
            reconfigure(errors="backslashreplace")
    from guard.mail import tune_allocator

    tune_allocator()  # a glibc heap pad: HTML parsing stops faulting pages in per message
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = command.main(args=args, prog_name=PROG, standalone_mode=False)
    except Fail as exc:
        error(str(exc))
        status = exc.code
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            status = 2
        else:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            error(" ".join(str(message).replace("Value error, ", "").split()))
            status = getattr(exc, "exit_code", 2) or 2
    except typer.Abort:
        sys.stderr.write("\n")
        status = 130
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 1
    if argv is None:
        sys.exit(status if isinstance(status, int) else 0)
    return status if isinstance(status, int) else 0
