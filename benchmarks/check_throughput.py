"""Throughput of ``check``'s pipeline against bare mail-parser parsing, in one run.

    .venv/bin/python benchmarks/check_throughput.py [--messages 2000] [--rounds 5]
    .venv/bin/python benchmarks/check_throughput.py --corpus /work/shared/corpus/public/ham
    .venv/bin/python benchmarks/check_throughput.py --profile

Times, over the same messages held in memory, in the same process,
  (a) ``mailparser.parse_from_bytes``                     - the floor: parsing alone;
  (b) ``guard.mail.parse_message`` + ``policy.evaluate`` - what ``check`` does per message,
and prints messages/s and the ratio b/a beside the target (0.75: the guard's own work may
cost at most a third on top of parsing). For where the time goes it also times
``parse_message`` alone and ``email.message_from_bytes``, the stdlib MIME parse that both
(a) and (b) start with. ``parse_message`` runs only the parts of mail-parser whose results
it uses (see ``guard.mail.mime.read_mail``), so (b) can beat (a) on mail with many Received
headers. Every pipeline first runs once over all messages (imports, compiled patterns,
the RE2 automata's caches), then the timed rounds take turns, (a) (b) (a) (b)..., so that
load from other processes hits both alike; the best round of each is kept. Like ``check``,
the process first calls ``guard.mail.tune_allocator()`` (``GUARD_MALLOC_DEFAULTS=1``
skips it).
Without ``--corpus`` the messages are generated here, deterministically: about 60 % ordinary
mail (plain text, multipart/alternative with HTML, a newsletter, a notification with links)
and 40 % risky mail (off-platform payment and contact requests, phishing with a link whose
text and target differ, a dangerous attachment), 2-5 KB each. No assertions on time.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

TARGET = 0.75

_WORD_TEXT = (
    "project deadline milestone review design database api endpoint deploy staging "
    "feedback invoice schedule meeting draft version release testing client update "
    "feature request bug report sprint backlog estimate scope budget hours weekly "
    "component layout mobile desktop browser server cache query migration report "
    "dashboard chart export import user account settings profile notification email"
)
WORDS = tuple(_WORD_TEXT.split())


def _paragraphs(rng: random.Random, count: int, words: tuple[int, int] = (40, 70)) -> str:
    paras = []
    for _ in range(count):
        n = rng.randint(*words)
        text = " ".join(rng.choice(WORDS) for _ in range(n))
        paras.append(text[0].upper() + text[1:] + ".")
    return "\n\n".join(paras)


def _base(rng: random.Random, i: int, sender: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "Sam Novak <sam.freelance@example.org>"
    msg["Subject"] = subject
    when = datetime(2024, 3, 1, 9, 0, tzinfo=UTC) + timedelta(minutes=37 * i)
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<bench-{i}@example.com>"
    msg["Authentication-Results"] = "mx.example.org; spf=pass; dkim=pass; dmarc=pass"
    return msg


def ham_plain(rng: random.Random, i: int) -> EmailMessage:
    msg = _base(rng, i, "Dana Client <dana@client.example>", "Re: dashboard milestone 2")
    msg.set_content(f"Hi Sam,\n\n{_paragraphs(rng, 5)}\n\nThanks,\nDana\n")
    return msg


def ham_alternative(rng: random.Random, i: int) -> EmailMessage:
    msg = _base(rng, i, "Lee Park <lee@agency.example>", "Spec for the export feature")
    text = _paragraphs(rng, 3)
    msg.set_content(f"Hello Sam,\n\n{text}\n\nBest,\nLee\n")
    html = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
    msg.add_alternative(
        f"<html><body><p>Hello Sam,</p>{html}<p>Best,<br>Lee</p></body></html>", subtype="html"
    )
    return msg


def ham_newsletter(rng: random.Random, i: int) -> EmailMessage:
    msg = _base(rng, i, "Python Weekly <news@pyweekly.example>", "Python Weekly - issue 612")
    msg["List-Unsubscribe"] = "<https://pyweekly.example/unsubscribe?u=123>"
    msg["List-Id"] = "Python Weekly <weekly.pyweekly.example>"
    items = []
    for k in range(8):
        title = " ".join(rng.choice(WORDS) for _ in range(5)).title()
        items.append(
            f'<h3><a href="https://pyweekly.example/r/{i}-{k}">{title}</a></h3>'
            f"<p>{_paragraphs(rng, 1, (15, 25))}</p>"
        )
    msg.set_content("Read this issue online: https://pyweekly.example/issues/612\n")
    msg.add_alternative(f"<html><body>{''.join(items)}</body></html>", subtype="html")
    return msg


def ham_notification(rng: random.Random, i: int) -> EmailMessage:
    msg = _base(rng, i, "GitHub <notifications@github.com>", "[acme/app] Run failed: CI - main")
    msg["List-Id"] = "acme/app <app.acme.github.com>"
    links = "\n".join(
        f"  https://github.com/acme/app/actions/runs/{9000 + i}/job/{k}" for k in range(6)
    )
    msg.set_content(
        f"Run failed for main (abc{i:04d}).\n\nJobs:\n{links}\n\n{_paragraphs(rng, 3)}\n\n"
        "You are receiving this because you are subscribed to this thread.\n"
        f"Manage notifications: https://github.com/settings/notifications?n={i}\n"
    )
    return msg


PAYMENT_ASK = (
    "Can you send me your PayPal so I pay you directly and we avoid the Upwork fees? "
    "I can also do a bank transfer if you prefer, and I will close the contract."
)
CONTACT_ASK = (
    "Please add me on WhatsApp +1 555 0100 or Telegram @kim_hiring so we can talk "
    "there instead of this platform. Also send me your personal email and phone number."
)


def _client_letter(
    rng: random.Random, i: int, sender: str, subject: str, greeting: str, ask: str, name: str
) -> EmailMessage:
    """A plain-text letter: greeting, three paragraphs, the ``ask``, two more, signature."""
    msg = _base(rng, i, sender, subject)
    msg.set_content(
        f"{greeting}\n\n{_paragraphs(rng, 3)}\n\n{ask}\n\n{_paragraphs(rng, 2)}\n\n{name}\n"
    )
    return msg


def risky_payment(rng: random.Random, i: int) -> EmailMessage:
    sender, subject = "Mark Buyer <mark.buyer@mail.example>", "About the contract"
    return _client_letter(rng, i, sender, subject, "Hi Sam,", PAYMENT_ASK, "Mark")


def risky_contact(rng: random.Random, i: int) -> EmailMessage:
    sender, subject = "Kim Hiring <kim.hr@mail.example>", "Interview for the position"
    return _client_letter(rng, i, sender, subject, "Hello,", CONTACT_ASK, "Kim")


def risky_phishing(rng: random.Random, i: int) -> EmailMessage:
    msg = _base(rng, i, "Upwork Support <support@upw0rk-verify.example>", "Verify your account")
    del msg["Authentication-Results"]
    msg["Authentication-Results"] = "mx.example.org; spf=fail; dkim=none; dmarc=fail"
    msg["Reply-To"] = "billing@other-domain.example"
    msg.set_content("Your account is on hold. Verify it now: https://upw0rk-verify.example/x\n")
    msg.add_alternative(
        "<html><body><p>Dear freelancer,</p><p>Your account is suspended until you verify "
        'your identity: <a href="https://upw0rk-verify.example/login?id='
        f'{i}">https://www.upwork.com/account/verify</a></p>'
        f"<p>{_paragraphs(rng, 3)}</p></body></html>",
        subtype="html",
    )
    return msg


def risky_attachment(rng: random.Random, i: int) -> EmailMessage:
    msg = _base(rng, i, "Accounts <accounts@invoices.example>", "Invoice #4471 overdue")
    msg.set_content(f"Please see the attached invoice.\n\n{_paragraphs(rng, 2)}\n")
    payload = bytes(rng.randrange(256) for _ in range(1200))
    msg.add_attachment(
        b"MZ" + payload,
        maintype="application",
        subtype="octet-stream",
        filename="invoice_4471.pdf.exe",
    )
    return msg


# 10 slots: 6 ordinary, 4 risky.
MIX: tuple[Callable[[random.Random, int], EmailMessage], ...] = (
    ham_plain,
    ham_alternative,
    ham_newsletter,
    ham_notification,
    ham_plain,
    ham_alternative,
    risky_payment,
    risky_contact,
    risky_phishing,
    risky_attachment,
)


def generated_messages(count: int, seed: int = 20240301) -> list[bytes]:
    """``count`` deterministic messages, cycling through MIX."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        msg = MIX[i % len(MIX)](rng, i)
        if msg.is_multipart():
            msg.set_boundary(f"==bench-{i}==")  # the default boundary is random
        out.append(bytes(msg))
    return out


def corpus_messages(directory: Path, count: int) -> list[bytes]:
    """``count`` messages found under ``directory`` (repeated if fewer; 0 = all of them)."""
    from guard.mail.sources import iter_sources

    found = [s.raw for s in iter_sources([directory])]
    if not found:
        sys.exit(f"check_throughput: no messages under {directory}")
    if count:
        found = (found * (count // len(found) + 1))[:count]
    return found


def best_times(
    pipelines: Sequence[Callable[[bytes], object]], messages: Sequence[bytes], rounds: int
) -> list[float]:
    """Best seconds per pass over ``messages`` of each pipeline, rounds interleaved."""
    best = [float("inf")] * len(pipelines)
    for _ in range(rounds):
        for i, func in enumerate(pipelines):
            gc.collect()
            start = time.perf_counter()
            for raw in messages:
                func(raw)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages", type=int, default=2000, help="how many (default 2000; 0 = whole --corpus)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, best kept")
    parser.add_argument("--corpus", type=Path, help="use the .eml files under this directory")
    parser.add_argument("--profile", action="store_true", help="profile (b) with pyinstrument")
    args = parser.parse_args(argv)

    logging.getLogger("mailparser").setLevel(logging.CRITICAL + 1)
    import email

    import mailparser

    from guard.mail import parse_message, tune_allocator
    from guard.policy import Verdict, evaluate, load_rules

    tuned = tune_allocator()

    if args.corpus:
        messages = corpus_messages(args.corpus, args.messages)
        origin = str(args.corpus)
    else:
        messages = generated_messages(args.messages)
        origin = "generated (60% ordinary, 40% risky)"
    rules = load_rules()
    size = sum(map(len, messages))

    def bare(raw: bytes) -> object:
        return mailparser.parse_from_bytes(raw)

    def guard(raw: bytes) -> Verdict:
        return evaluate(rules, parse_message(raw))

    # Warm up every path over all messages (imports, regex compilation, caches, the RE2
    # automata), and count what the rules flag so a reader can see the mix really is what
    # it claims.
    for raw in messages:
        bare(raw)
        email.message_from_bytes(raw)
    flagged = sum(guard(raw).risk != "none" for raw in messages)
    t_bare, t_guard, t_parse, t_stdlib = best_times(
        [bare, guard, parse_message, email.message_from_bytes], messages, args.rounds
    )
    rate_bare = len(messages) / t_bare
    rate_parse = len(messages) / t_parse
    rate_guard = len(messages) / t_guard
    rate_stdlib = len(messages) / t_stdlib
    ratio = rate_guard / rate_bare

    print(f"messages: {len(messages)} from {origin}, {size / len(messages) / 1024:.1f} KB mean")
    print(f"flagged:  {flagged / len(messages):.0%} of them (risk >= low)")
    print(
        f"rounds:   {args.rounds} (interleaved, best kept), python {sys.version.split()[0]}, "
        f"pid {os.getpid()}"
    )
    print(f"malloc:   {'M_TOP_PAD 4 MiB (tune_allocator)' if tuned else 'defaults'}")
    print()
    print(f"{'pipeline':<42} {'msg/s':>9} {'ms/msg':>8}")
    print(f"{'(a) mailparser.parse_from_bytes':<42} {rate_bare:>9.0f} {1000 / rate_bare:>8.3f}")
    print(
        f"{'    email.message_from_bytes (in a and b)':<42} {rate_stdlib:>9.0f} "
        f"{1000 / rate_stdlib:>8.3f}"
    )
    print(f"{'    parse_message alone':<42} {rate_parse:>9.0f} {1000 / rate_parse:>8.3f}")
    print(f"{'(b) parse_message + evaluate':<42} {rate_guard:>9.0f} {1000 / rate_guard:>8.3f}")
    verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
    print(f"{'ratio b/a':<42} {ratio:>9.2f}   target >= {TARGET:.2f}  {verdict}")

    if args.profile:
        try:
            from pyinstrument import Profiler
        except ImportError:
            print("\n--profile: pyinstrument is not installed", file=sys.stderr)
            return 0
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for raw in messages:
            guard(raw)
        profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False)
        print("\nprofile of (b), top:")
        print("\n".join(text.splitlines()[:60]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
