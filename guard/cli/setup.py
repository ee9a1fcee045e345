"""``setup``: a guided first configuration (or a change of it), interactive or scripted.

Asks for the work address and picks the provider preset, reads the secret without echo,
checks the mailbox live with ``doctor``'s checks (a failed step is asked again, not the
whole setup), lets the user choose folders, label mode and the digest, shows what a scan
of the last 7 days would label, then writes the configuration and the secret and offers
to start the service. Every answer is also an option; ``--non-interactive`` takes them
from the options alone and names the first one missing.

The parts: ``setup_wizard`` (the steps in order), ``setup_prompts`` (asking),
``setup_choices`` (folders, digest, preview, service), ``setup_config`` (the answers and
the file they become) and ``setup_steps`` (staging, writing, the dry run, systemd).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from guard.cli.common import app, fail, quiet_libraries
from guard.cli.setup_wizard import Wizard
from guard.config.providers import provider_keys


@app.command()
def setup(
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            metavar="FILE",
            help="File to write (default: $INBOX_GUARD_CONFIG, else "
            "$XDG_CONFIG_HOME/inbox-guard/config.toml). An existing one is edited.",
        ),
    ] = None,
    account: Annotated[
        str | None,
        typer.Option("--account", metavar="NAME", help="Add (or edit) the mailbox NAME."),
    ] = None,
    non_interactive: Annotated[
        bool,
        typer.Option("--non-interactive", help="Ask nothing: take every answer from options."),
    ] = False,
    address: Annotated[str | None, typer.Option("--address", help="The work address.")] = None,
    provider: Annotated[
        str | None,
        typer.Option("--provider", help="Preset: " + ", ".join(provider_keys()) + "."),
    ] = None,
    imap_host: Annotated[str | None, typer.Option("--imap-host", help="IMAP server.")] = None,
    imap_port: Annotated[int | None, typer.Option("--imap-port", help="IMAP port.")] = None,
    imap_tls: Annotated[
        str | None, typer.Option("--imap-tls", help="implicit, starttls or none.")
    ] = None,
    ca_file: Annotated[
        str | None, typer.Option("--ca-file", help="CA file for a private certificate.")
    ] = None,
    username: Annotated[str | None, typer.Option("--username", help="IMAP login name.")] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            "--password-file",
            metavar="PATH",
            help="Copy the password from this file (without a terminal, standard input).",
        ),
    ] = None,
    oauth2_command: Annotated[
        str | None,
        typer.Option("--oauth2-command", help="Command printing an OAuth2 access token."),
    ] = None,
    secret_store: Annotated[
        str | None,
        typer.Option(
            "--secret-store", help="file (0600, beside the config) or credential (systemd)."
        ),
    ] = None,
    folder: Annotated[
        list[str] | None,
        typer.Option("--folder", metavar="NAME", help="A folder to guard (repeat it)."),
    ] = None,
    label_mode: Annotated[
        str | None, typer.Option("--label-mode", help="auto, gmail, keywords or folders.")
    ] = None,
    digest_to: Annotated[
        str | None, typer.Option("--digest-to", help="Mail the daily digest to this address.")
    ] = None,
    no_digest: Annotated[bool, typer.Option("--no-digest", help="No daily digest.")] = False,
    digest_time: Annotated[str | None, typer.Option("--digest-time", help="HH:MM.")] = None,
    digest_from: Annotated[str | None, typer.Option("--digest-from", help="Digest sender.")] = None,
    smtp_host: Annotated[str | None, typer.Option("--smtp-host", help="SMTP server.")] = None,
    smtp_port: Annotated[int | None, typer.Option("--smtp-port", help="SMTP port.")] = None,
    smtp_tls: Annotated[
        str | None, typer.Option("--smtp-tls", help="starttls, implicit or none.")
    ] = None,
    smtp_username: Annotated[
        str | None, typer.Option("--smtp-username", help="SMTP login (default: IMAP's).")
    ] = None,
    smtp_password_file: Annotated[
        Path | None,
        typer.Option("--smtp-password-file", metavar="PATH", help="SMTP password, if its own."),
    ] = None,
    skip_preview: Annotated[
        bool, typer.Option("--skip-preview", help="No dry run of the last 7 days.")
    ] = False,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            help="user (install and start the user unit), system (print its commands) or none.",
        ),
    ] = None,
) -> None:
    """Write (or change) the configuration step by step, check it live, preview it."""
    # every parameter but --non-interactive is an answer (an empty --folder list: none)
    options = {
        name: (value or None) if isinstance(value, list) else value
        for name, value in locals().items()
        if name != "non_interactive"
    }
    quiet_libraries()
    if not non_interactive and not sys.stdin.isatty():
        fail(
            "setup asks questions: run it in a terminal, or pass --non-interactive and the "
            "answers as options"
        )
    wizard = Wizard(options, interactive=not non_interactive)
    try:
        wizard.run()
    except EOFError:
        fail("setup: the input ended before every question was answered")
    finally:
        wizard.close()
