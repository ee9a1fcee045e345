"""One run of ``inbox-guard setup``, in order: the file, the account, the address and its
provider preset, the server, the secret and the live check (a failed step is asked again,
not the whole setup); then the choices of ``setup_choices``."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

from guard.cli import setup_steps as steps
from guard.cli.common import fail
from guard.cli.setup_choices import Choices
from guard.cli.setup_prompts import (
    TLS_MODES,
    _address_default,
    _check_address,
    _check_file,
    _check_host,
)
from guard.config import ConfigError, config_candidates, load_config
from guard.config.providers import (
    PROVIDERS,
    Provider,
    default_port,
    provider_for_address,
    provider_keys,
    provider_named,
)

_SERVER_STEP = {"dns", "tcp", "tls"}


def _interrupt(*_args: Any) -> None:
    raise KeyboardInterrupt


def _check_account(value: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        return None
    return "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"


class Wizard(Choices):
    """One run of setup: the questions in order, each answered by its option or asked."""

    def __init__(self, options: dict[str, Any], *, interactive: bool) -> None:
        super().__init__(options, interactive=interactive)
        self.target = self._target(options["config_path"])
        self.staging: steps.Staging | None = None
        self.committed = False
        self._store_asked = False

    def run(self) -> None:
        # A closed terminal or a kill ends setup like Ctrl-C: staged files are removed.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)
        self.raw = self._read_existing()
        self.account = self._account()
        old = steps.old_imap(self.raw, self.account)
        self.say(f"inbox-guard setup: {self.target}", "bold")
        if self.raw:
            self.say("The file exists: its values are the defaults; a dated backup is kept.")
        noted = steps.noted_address(self.target) if self.raw else None
        address = self.ask(
            "Work address",
            "address",
            noted or _address_default(self.raw, old),
            check=_check_address,
        )
        preset = self._provider(address, old)
        self.plan = steps.Plan(
            config_path=self.target,
            account=self.account,
            address=address,
            provider=preset,
            imap=self._imap_server(preset, address, old),
        )
        self._secret_step(old)
        self.staging = steps.Staging(self.target)
        checks = self._live_check()
        self._folders(checks)
        self._digest()
        if not self.o["skip_preview"]:
            self._preview()
        if not self.confirm(f"Write {self.target}?", True):
            self.say("Nothing written.")
            return
        written = steps.commit(self.raw, self.plan)
        self.committed = True
        self._report(written)
        self._service()

    def close(self) -> None:
        if self.staging is not None:
            self.staging.close(keep_dirs=self.committed)

    def _target(self, given: Path | None) -> Path:
        if given is not None:
            return given.expanduser().absolute()
        from_env = os.environ.get("INBOX_GUARD_CONFIG")
        if from_env:
            return Path(from_env).expanduser().absolute()
        return config_candidates(os.environ)[-2]  # the user's XDG file

    def _read_existing(self) -> dict[str, Any]:
        """The current file as TOML data; one the guard would refuse is not edited."""
        try:
            raw = steps.read_raw(self.target)
            if raw:
                load_config(self.target, os.environ)
        except (OSError, ValueError) as exc:
            fail(f"{self.target}: cannot be read as TOML ({exc}); fix or move it first")
        except ConfigError as exc:
            fail(f"{exc} (fix or move the file first)")
        return raw

    def _account(self) -> str | None:
        names = [a.get("name", "") for a in self.raw.get("account", [])]
        wanted = self.o.get("account")
        if wanted is not None:
            if problem := _check_account(wanted):
                fail(f"--account: {problem}")
            if self.o.get("secret_store") == "credential":
                fail("--secret-store credential holds one mailbox's password: use files")
            return str(wanted)
        if names and not self.interactive:
            fail(f"missing value: --account (the file has [[account]] blocks: {', '.join(names)})")
        if names:
            return self.ask(
                "Which account (an existing name edits it, a new one adds it)",
                "account",
                names[0],
                check=_check_account,
            )
        return None

    def _provider(self, address: str, old: dict[str, Any]) -> Provider:
        if self.o.get("provider"):
            try:
                preset = provider_named(self.o["provider"])
            except KeyError as exc:
                fail(f"--provider: {exc.args[0]}")
        elif (found := provider_for_address(address)) is not None:
            preset = found
        else:
            # a custom domain: the preset the file used (by its IMAP host), else ask
            chosen_first = sorted(PROVIDERS, key=lambda p: bool(p.domains))
            by_host = next(
                (p for p in chosen_first if old and p.imap_host == old.get("host")), None
            )
            if not self.interactive and by_host is None and self.o.get("imap_host"):
                by_host = provider_named("generic")
            if self.interactive:
                self.say(
                    "The address's domain is not one of the known providers. If it is "
                    "hosted by Google Workspace, Microsoft 365 or Zoho, pick that; "
                    "otherwise generic."
                )
            default = by_host.key if by_host else ("generic" if self.interactive else None)
            key = self.ask("Provider", "provider", default, choices=list(provider_keys()))
            preset = provider_named(key)
        self._advise(preset, address)
        return preset

    def _advise(self, preset: Provider, address: str) -> None:
        self.say(f"Provider: {preset.name}", "bold")
        if preset.imap_host:
            self.say(
                f"  IMAP {preset.imap_host}:{preset.imap_port} ({preset.imap_tls}), "
                f"digest via SMTP {preset.smtp_host}:{preset.smtp_port} ({preset.smtp_tls})"
            )
        self.say(f"  labels: {preset.labels}")
        if preset.secret_page:
            what = "Bridge password" if preset.auth == "bridge" else "app password"
            self.say(f"  {what}: {preset.secret_page}")
        if preset.oauth2_example:
            self.say(f"  OAuth2 token command, e.g.: {preset.oauth2_command(address)}")
        for line in preset.advice:
            self.say(f"  - {line}")

    def _imap_server(
        self, preset: Provider, address: str, old: dict[str, Any], *, again: bool = False
    ) -> steps.ServerAnswers:
        """Host, TLS, port, CA file and login: asked for a generic server or Proton Bridge
        (and after a failed connection), else the preset's (options override both)."""
        same = bool(old) and (preset.is_generic or again or old.get("host") == preset.imap_host)
        asks = preset.is_generic or preset.auth == "bridge" or again
        host: str | None = preset.imap_host
        tls: str = preset.imap_tls
        port = preset.imap_port
        if same:
            host, tls = old.get("host", host), old.get("tls", tls)
            port = int(old.get("port") or default_port("imap", tls))
        if asks:
            host = self.ask("IMAP server", "imap_host", host, check=_check_host)
            tls = self.ask(
                "TLS (implicit: port 993; starttls: 143)", "imap_tls", tls, choices=TLS_MODES
            )
            if not same and preset.is_generic:
                port = default_port("imap", tls)
            port = self.ask_port("IMAP port", "imap_port", port)
        else:
            host = self.o.get("imap_host") or host
            tls = self.o.get("imap_tls") or tls
            port = int(self.o.get("imap_port") or port)
        ca_file = self.o.get("ca_file") or (old.get("ca_file") if same else None)
        if asks and self.o.get("ca_file") is None:
            ca_file = (
                self.ask(
                    "CA file for the server's certificate (empty: the system's CAs)",
                    "ca_file",
                    ca_file,
                    allow_empty=True,
                    check=_check_file,
                )
                or None
            )
        login_default = old.get("username") if same else None
        if login_default is None and preset.username_is_address:
            login_default = address
        login = self.ask("Login name", "username", login_default or address)
        return steps.ServerAnswers(
            host=str(host), port=port, tls=str(tls), username=login, ca_file=ca_file
        )

    def _secret_step(self, old: dict[str, Any]) -> None:
        imap = self.plan.imap
        kept = {k: old[k] for k in steps.SECRET_KEYS if k in old}
        how = "password"
        preset = self.plan.provider
        if preset.auth == "oauth2" or self.o.get("oauth2_command"):
            how = "oauth2"
        elif preset.oauth2_example and self.interactive and self.o.get("password_file") is None:
            how = self.ask(
                "Log in with an app password or an OAuth2 token command",
                "login_with",
                "oauth2" if "oauth2_token_command" in old else "password",
                choices=["password", "oauth2"],
            )
        if how == "oauth2":
            imap.oauth2_command = self.ask(
                "OAuth2 token command (prints an access token)",
                "oauth2_command",
                old.get("oauth2_token_command")
                # the example is offered to type over, never taken silently by a script
                or (self.interactive and preset.oauth2_command(self.plan.address))
                or None,
            )
            return
        imap.kept = kept if "oauth2_token_command" not in kept else {}
        imap.secret = self.secret(
            f"Password for {imap.username}", "password_file", keep=bool(imap.kept)
        )
        if imap.secret is not None and not self._store_asked:
            self._store_asked = True
            store = self.o.get("secret_store")
            if store is None and self.interactive and self.account is None:
                store = self.ask(
                    "Keep it in a file beside the config, or as a systemd credential",
                    "secret_store",
                    "file",
                    choices=["file", "credential"],
                )
            if store not in (None, "file", "credential"):
                fail("--secret-store: must be file or credential")
            self.plan.secret_store = store or "file"

    def _live_check(self) -> list[Any]:
        """doctor's checks on the staged file; a failed step is asked again (interactive)
        or ends setup with the check's line and hint."""
        from guard.service.doctor import run_checks

        while True:
            try:
                self._stage()
            except ConfigError as exc:
                self._failed("config", self._own_words(exc), "", code=2)
                self._server_again()
                continue
            assert self.staging is not None and self.staging.config is not None
            self.say("Checking the mailbox ...", "bold")
            checks = []
            failed = None
            for check in run_checks(self.staging.config):
                name = check.name.split("] ", 1)[-1]
                if name in ("database", "smtp", "config", "rules"):  # not this step's
                    continue
                checks.append(check)
                if name != "labels":  # shown with the label mode question
                    self._show(check)
                if check.ok is False and failed is None:
                    failed = check
            if failed is None:
                return checks
            name = failed.name.split("] ", 1)[-1]
            self._failed(name, failed.detail, failed.hint, code=1)
            if name in _SERVER_STEP:
                self._server_again()
            else:  # the login or the secret: ask for the secret again, nothing else
                self._forget("password_file", "oauth2_command")
                self._secret_step({})

    def _server_again(self) -> None:
        self._forget("imap_host", "imap_port", "imap_tls", "ca_file", "username")
        imap = self.plan.imap
        current = {
            "host": imap.host,
            "port": imap.port,
            "tls": imap.tls,
            "username": imap.username,
            "ca_file": imap.ca_file,
        }
        fresh = self._imap_server(self.plan.provider, self.plan.address, current, again=True)
        fresh.secret, fresh.kept, fresh.oauth2_command = imap.secret, imap.kept, imap.oauth2_command
        self.plan.imap = fresh
