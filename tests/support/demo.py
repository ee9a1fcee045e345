"""The demo behind `make demo`: inbox-guard against a throwaway mailbox on this machine.

It starts a private Dovecot and SMTP server on 127.0.0.1, fills a work mailbox with a week
of freelance mail (tests/fixtures/week: INBOX and Sent), then runs the real `inbox-guard`
commands against it: `scan` (labels the risky threads on the server), `findings`, and
`digest --send` (the digest is delivered into a second, "personal" mailbox). With `--keep`
it leaves everything running, with `inbox-guard run` watching the mailbox, until Ctrl-C,
so a mail client can connect and show the labels.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from support.servers import Dovecot, SmtpSink  # noqa: E402

WEEK = ROOT / "tests" / "fixtures" / "week"
GUARD = [sys.executable, "-m", "guard"]


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, 70 - len(text)))


def run(*args: str, config: Path) -> str:
    proc = subprocess.run(
        [*GUARD, *args, "--config", str(config)], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo: inbox-guard {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="inbox-guard-demo-"))
    dovecot = Dovecot(password="demo-password")
    sink = SmtpSink(starttls=True, auth=True, cert=dovecot.cert)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        work_user = dovecot.new_user("alex-work")
        personal_user = dovecot.new_user("alex-personal")
        inbox = sorted((WEEK / "INBOX").glob("*.eml"))
        sent = sorted((WEEK / "Sent").glob("*.eml"))
        for path in inbox:
            dovecot.save(work_user, path.read_bytes())
        for path in sent:
            dovecot.save(work_user, path.read_bytes(), mailbox="Sent")

        ca_file = work / "ca.pem"
        shutil.copy(dovecot.ca_file, ca_file)
        (work / "imap-password").write_text(dovecot.password + "\n")
        (work / "smtp-password").write_text(sink.password + "\n")
        for secret in ("imap-password", "smtp-password"):
            (work / secret).chmod(0o600)
        config = work / "config.toml"
        config.write_text(
            f"""# written by the inbox-guard demo
[imap]
host = "127.0.0.1"
port = {dovecot.port}
tls = "starttls"
username = "{work_user}"
password_file = "imap-password"
ca_file = "ca.pem"

[store]
url = "sqlite:///{work / "guard.sqlite3"}"

[smtp]
host = "127.0.0.1"
port = {sink.port}
tls = "starttls"
username = "{sink.username}"
password_file = "smtp-password"
ca_file = "ca.pem"

[digest]
to = "{personal_user}@personal.example"
from = "inbox-guard@work.example"
time = "08:00"

[schedule]
poll_interval = 10
idle = true
"""
        )
        heading("the mailbox")
        say(
            f"A throwaway Dovecot on 127.0.0.1 holds a week of freelance mail for "
            f"'{work_user}': {len(inbox)} messages in INBOX, {len(sent)} in Sent."
        )

        heading("inbox-guard scan")
        summary = json.loads(run("scan", "--format", "json", config=config))
        say(
            f"{summary['new_messages']} messages read, {summary['risky']} risky, "
            f"{summary['labelled']} labelled on the server ({summary['label_mode']})."
        )
        with dovecot.session(work_user) as client:
            boxes = sorted(
                name for _f, _d, name in client.list_folders() if str(name).startswith("Guard")
            )
        say("Label folders now on the server: " + ", ".join(boxes))

        heading("inbox-guard findings")
        say(run("findings", config=config).rstrip())

        heading("inbox-guard digest --send")
        run("digest", "--send", config=config)
        delivered = sink.wait_for(1, timeout=30)[0]
        dovecot.deliver(personal_user, delivered.data)
        message = delivered.message
        text_part = message.get_body(preferencelist=("plain",))
        say(f"Sent to {', '.join(delivered.rcpt_tos)} and delivered into '{personal_user}':")
        say(f"Subject: {message['Subject']}")
        say()
        say(text_part.get_content().rstrip() if text_part is not None else "(no text part)")

        heading("see it in a mail client")
        say(
            f"IMAP server 127.0.0.1 port {dovecot.port} (STARTTLS) or {dovecot.tls_port} "
            f"(TLS); certificate {ca_file}\n"
            f"  work mailbox:     user {work_user}   password {dovecot.password}\n"
            f"  personal mailbox: user {personal_user}   password {dovecot.password}\n"
            "Keywords ($GuardHighRisk, $Phishing, ...) show in clients that display IMAP "
            "keywords; the Guard/... folders show in every client."
        )
        if not args.keep:
            say("\nRun `make demo ARGS=--keep` to keep it running and connect a client.")
            return 0
        daemon = subprocess.Popen([*GUARD, "run", "--config", str(config)])
        say(
            "\n`inbox-guard run` is watching the work mailbox (IDLE + poll). Send it mail "
            f"with: doveadm -c {dovecot.conf} save -u {work_user} < message.eml\n"
            "Ctrl-C stops everything."
        )
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while daemon.poll() is None:
            time.sleep(0.5)
        return daemon.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(timeout=15)
        sink.close()
        dovecot.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
