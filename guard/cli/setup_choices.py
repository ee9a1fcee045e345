"""The later steps of ``inbox-guard setup``, once the mailbox answered: folders and label
mode, the digest and its SMTP server, the dry run of the last 7 days, what was written,
and the service."""

from __future__ import annotations

import os
from typing import Any

from rich.table import Table
from rich.text import Text

from guard.cli import setup_steps as steps
from guard.cli.common import fail
from guard.cli.setup_prompts import (
    LABEL_MODES,
    TLS_MODES,
    Prompter,
    _check_address,
    _check_folders,
    _check_host,
    _check_time,
    _one_line,
)
from guard.config import ConfigError, config_candidates
from guard.config.providers import (
    default_port,
)
from guard.reports import clean


class Choices(Prompter):
    """Folders, labels, digest, preview, writing and the service."""

    def _folders(self, checks: list[Any]) -> None:
        listed, sent = self._server_folders()
        if listed:
            self.say("Folders on the server: " + ", ".join(listed))
        default = ["INBOX", *([sent] if sent else [])]
        current = steps.old_imap(self.raw, self.account).get("folders")
        given = self.o.get("folder")
        if given:
            chosen = [f.strip() for f in given if f.strip()]
        elif self.interactive:
            answer = self.ask(
                "Folders to guard (comma-separated)",
                "folder",
                ", ".join(current or default),
                check=lambda v: _check_folders(v, listed),
            )
            chosen = [f.strip() for f in answer.split(",") if f.strip()]
        else:
            chosen = list(current or default)
        missing = [f for f in chosen if listed and f not in listed]
        if missing:
            fail(f"--folder: not on the server: {', '.join(missing)}")
        self.plan.folders = None if chosen == default else tuple(chosen)
        found = next((c for c in checks if c.name.endswith("labels")), None)
        if found is not None:
            self.say(f"Labels: {found.detail}")
        old_mode = self._old_label_mode()
        self.plan.label_mode = self.ask(
            "Label mode (auto follows what the server offers)",
            "label_mode",
            old_mode,
            choices=LABEL_MODES,
        )

    def _old_label_mode(self) -> str:
        if self.account is None:
            return str(self.raw.get("labels", {}).get("mode", "auto"))
        for entry in self.raw.get("account", []):
            if entry.get("name") == self.account:
                return str(entry.get("labels", {}).get("mode", "auto"))
        return "auto"

    def _server_folders(self) -> tuple[list[str], str | None]:
        from guard.mailbox import SENT, Connection, ImapError, server_settings

        config = self._stage()
        conn = Connection(server_settings(config, self.account or "default"))
        try:
            conn.open()
            assert conn.client is not None
            names = [str(name) for _flags, _delim, name in conn.client.list_folders()]
            return sorted(names, key=lambda n: (n != "INBOX", n.lower())), conn.special_folder(SENT)
        except (ImapError, OSError) as exc:
            self.say(f"could not list the folders: {exc}", "yellow")
            return [], None
        except Exception as exc:  # imapclient's errors: a listing is a convenience only
            self.say(f"could not list the folders: {type(exc).__name__}", "yellow")
            return [], None
        finally:
            conn.close()

    def _digest(self) -> None:
        old_digest = self.raw.get("digest", {})
        if self.o["no_digest"]:
            return
        to = self.ask(
            "Send a daily digest to (your other address; empty: no digest)",
            "digest_to",
            old_digest.get("to"),
            allow_empty=True,
            check=_check_address,
        )
        if not to:
            return
        self.plan.digest_to = to
        old_time = old_digest.get("time")
        old_time = old_time.strftime("%H:%M") if hasattr(old_time, "strftime") else old_time
        self.plan.digest_time = self.ask(
            "Digest time (HH:MM)", "digest_time", old_time or "08:00", check=_check_time
        )
        self.plan.digest_from = self.ask(
            "Digest sender address", "digest_from", old_digest.get("from") or self.plan.address
        )
        self._smtp_server()
        from guard.service.doctor import run_checks

        while True:
            try:
                self._stage()
            except ConfigError as exc:
                self._failed("config", self._own_words(exc), "", code=2)
                self._forget("smtp_host", "smtp_port", "smtp_tls", "smtp_username")
                self._smtp_server(again=True)
                continue
            assert self.staging is not None and self.staging.config is not None
            smtp = next((c for c in run_checks(self.staging.config) if c.name == "smtp"), None)
            if smtp is None or smtp.ok is not False:
                if smtp is not None:
                    self._show(smtp)
                return
            self._show(smtp)
            self._failed("smtp", smtp.detail, smtp.hint, code=1)
            self._forget(
                "smtp_host", "smtp_port", "smtp_tls", "smtp_username", "smtp_password_file"
            )
            self._smtp_server(again=True)

    def _smtp_server(self, again: bool = False) -> None:
        preset = self.plan.provider
        imap = self.plan.imap
        old: dict[str, Any] = self.raw.get("smtp", {})
        if again and self.plan.smtp is not None:  # the answers that failed are the defaults
            current = self.plan.smtp
            old = {"host": current.host, "port": current.port, "tls": current.tls}
            old |= {"username": current.username, "ca_file": current.ca_file}
        generic = preset.is_generic
        host_default = old.get("host") or preset.smtp_host or imap.host
        tls_default = old.get("tls") or (preset.smtp_tls if not generic else "starttls")
        if generic or again:
            host = self.ask("SMTP server", "smtp_host", host_default, check=_check_host)
            tls = self.ask(
                "SMTP TLS (starttls: port 587; implicit: 465)",
                "smtp_tls",
                tls_default,
                choices=TLS_MODES,
            )
            port_default = int(old.get("port") or default_port("smtp", tls))
            port = self.ask_port("SMTP port", "smtp_port", port_default)
        else:
            host = self.o.get("smtp_host") or host_default
            tls = self.o.get("smtp_tls") or tls_default
            port = int(self.o.get("smtp_port") or old.get("port") or preset.smtp_port)
        login = self.ask("SMTP login name", "smtp_username", old.get("username") or imap.username)
        answers = steps.ServerAnswers(
            host=host,
            port=port,
            tls=tls,
            username=login,
            ca_file=old.get("ca_file") or imap.ca_file,
        )
        answers.oauth2_command = imap.oauth2_command
        own = login != imap.username or self.o.get("smtp_password_file") is not None or again
        if own and not imap.oauth2_command:
            kept = {k: old[k] for k in steps.SECRET_KEYS if k in old}
            answers.kept = kept
            answers.secret = self.secret(
                f"SMTP password for {login}", "smtp_password_file", keep=bool(kept)
            )
        self.plan.smtp = answers
        self.plan.smtp_own_secret = own and not imap.oauth2_command

    def _preview(self) -> None:
        config = self._stage()
        self.say(
            "What the guard would label among the last 7 days of mail (a dry run: "
            "nothing is changed):",
            "bold",
        )
        try:
            summary = steps.dry_run(config, self.account or "default")
        except Exception as exc:  # a preview only: say why and go on
            self.say(f"the dry run failed: {exc}", "yellow")
            return
        rows = summary.to_dict().get("would_label", [])
        self.say(
            f"{summary.new_messages} message(s) read, {summary.risky} risky, "
            f"{len(rows)} would be labelled (labels: {summary.label_mode})"
        )
        if not rows:
            return
        table = Table(show_lines=False)
        for column in ("Folder", "From", "Subject", "Risk", "Labels"):
            table.add_column(column)
        for row in rows:
            labels = ", ".join(x.partition(":")[2] for x in row["labels"])
            table.add_row(
                *(
                    Text(clean(str(v)))
                    for v in (
                        row["folder"],
                        row["from"],
                        str(row["subject"])[:60],
                        row["risk"],
                        labels,
                    )
                )
            )
        self.console.print(table)

    def _report(self, written: steps.Written) -> None:
        mode = oct(written.config.stat().st_mode & 0o777)[2:]
        self.say(f"wrote {written.config} (mode {mode})", "green")
        for path in written.secrets:
            self.say(f"wrote {path} (mode {oct(path.stat().st_mode & 0o777)[2:]})", "green")
        if written.backup is not None:
            self.say(f"the previous file is kept as {written.backup}")
        self.say(f"Check it any time: inbox-guard doctor --config {written.config}")

    def _service(self) -> None:
        choice = self.o.get("service")
        if choice is None and self.interactive:
            user_file = self.target == config_candidates(os.environ)[-2]
            if user_file and self.confirm(
                "Install and start the user service now (systemctl --user)?", False
            ):
                choice = "user"
            else:
                choice = (
                    "system"
                    if self.confirm("Show the commands for a system service instead?", False)
                    else "none"
                )
        if choice in (None, "none"):
            self.say("Start it by hand: inbox-guard run --config " + str(self.target))
            return
        if choice == "user":
            try:
                lines = steps.install_user_unit(self.target)
            except Exception as exc:  # systemctl missing or failing: the user can do it
                self.say(f"could not install the user service: {_one_line(exc)}", "yellow")
                self.say("systemd/README.md, 'User service', lists the commands.")
                return
            for line in lines:
                self.say(line)
            self.say(
                "It runs while you are logged in; to keep it running after you log out, "
                'run once: loginctl enable-linger "$USER"'
            )
            return
        if choice == "system":
            self.say("As root, for the system service:", "bold")
            for command in steps.system_unit_commands(self.plan):
                self.say("  " + command)
            return
        fail("--service: must be user, system or none")
