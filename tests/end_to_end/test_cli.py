"""The real ``inbox-guard`` command (``python -m guard`` and the console script) end to end.

Every test runs the installed command in a subprocess on message files written here, with
the real mail parser and the real rules, and checks what a user or another tool sees:
stdout, stderr and the exit status.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import CLI, run_cli

CONTRACT_KEYS = [
    "source",
    "message_id",
    "subject",
    "risk",
    "score",
    "categories",
    "findings",
]
FINDING_KEYS = ["rule", "category", "score", "where", "evidence", "explanation"]
LEVELS = ["none", "low", "medium", "high"]
CATEGORIES = {
    "off_platform_payment",
    "off_platform_contact",
    "contact_request",
    "personal_data",
    "scam",
    "phishing",
    "dispute",
}

HAM = b"""\
From: Dana Reyes <dana@client.example>
To: Sam Novak <sam.freelance@example.org>
Subject: Staging review on Thursday
Date: Tue, 05 Mar 2024 10:12:00 +0000
Message-ID: <ham-1@client.example>
Content-Type: text/plain; charset=utf-8

Hi Sam,

the staging deploy looks good. The export button works and the chart loads
fast now. Let's go through the remaining items in the review on Thursday.

Thanks,
Dana
"""

PAY_BODY = (
    "Hi Sam,\n\n"
    "thanks for the proposal, the scope looks right to me. One thing: can you send me\n"
    "your PayPal so I pay you directly and we avoid the Upwork fees? It saves us both\n"
    "money and I can pay the first half today.\n\n"
    "Best,\nMark\n"
)

PAY = (
    "From: Mark Buyer <mark.buyer@mail.example>\n"
    "To: Sam Novak <sam.freelance@example.org>\n"
    "Subject: About the contract\n"
    "Date: Tue, 05 Mar 2024 11:40:00 +0000\n"
    "Message-ID: <pay-1@mail.example>\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n" + PAY_BODY
).encode()

HOSTILE_SUBJECT = "Invoice \x1b[31mPAID\x1b[0m \u202egnp.exe now"
HOSTILE = (
    "From: Mark Buyer <mark.buyer@mail.example>\n"
    "To: Sam Novak <sam.freelance@example.org>\n"
    "Subject: =?utf-8?b?" + base64.b64encode(HOSTILE_SUBJECT.encode()).decode() + "?=\n"
    "Message-ID: <hostile-1@mail.example>\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n" + PAY_BODY
).encode()

GARBAGE = bytes(range(256)) * 3 + b"\x1b[31m\x00\xff\n\n\xfe\xfd"


# No colour and a fixed width, whatever the terminal running the tests asks for.
PLAIN_ENV = {
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "TTY_INTERACTIVE": None,
    "CLICOLOR_FORCE": None,
    "NO_COLOR": "1",
    "COLUMNS": "100",
    "PYTHONIOENCODING": "utf-8",
}


def run(*args: str | Path, cwd: Path, script: bool = False) -> subprocess.CompletedProcess[str]:
    """The installed command: ``python -m guard`` or the venv's ``inbox-guard`` script."""
    command = CLI
    if script:
        exe = Path(sys.executable).parent / "inbox-guard"
        assert exe.exists(), f"{exe} missing: install the project (pip install -e .)"
        command = (str(exe),)
    return run_cli(*args, command=command, cwd=cwd, env=PLAIN_ENV)


def records(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def squash(text: str) -> str:
    return " ".join(text.split())


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("inbox-guard: error: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr


@pytest.fixture
def mail(tmp_path: Path) -> Path:
    (tmp_path / "ham.eml").write_bytes(HAM)
    (tmp_path / "pay.eml").write_bytes(PAY)
    return tmp_path


def check_json(cwd: Path, *args: str | Path) -> dict[str, dict[str, object]]:
    result = run("check", "--format", "json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return {str(r["source"]): r for r in records(result.stdout)}


# --------------------------------------------------------------------------- check --format json


def test_json_lines_contract(mail: Path) -> None:
    result = run("check", "--format", "json", "ham.eml", "pay.eml", cwd=mail)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    ham, pay = (json.loads(line) for line in lines)

    for rec in (ham, pay):
        assert list(rec)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
        assert set(rec) <= {*CONTRACT_KEYS, "defects"}
        assert rec["risk"] in LEVELS
        assert isinstance(rec["score"], float | int)
        for f in rec["findings"]:
            assert list(f) == FINDING_KEYS
            assert f["category"] in CATEGORIES

    assert ham["source"] == "ham.eml"
    assert ham["message_id"] == "<ham-1@client.example>"
    assert ham["subject"] == "Staging review on Thursday"
    assert ham["risk"] == "none"
    assert ham["categories"] == []

    assert pay["source"] == "pay.eml"
    assert pay["subject"] == "About the contract"
    assert pay["risk"] != "none"
    assert "off_platform_payment" in pay["categories"]
    assert set(pay["categories"]) <= {f["category"] for f in pay["findings"]}
    payment = [f for f in pay["findings"] if f["category"] == "off_platform_payment"]
    assert payment
    for f in payment:
        assert f["rule"] and f["explanation"]
        evidence = squash(str(f["evidence"]).strip("…. "))
        assert evidence, f
        # The evidence is the message's own text (maybe shortened), not a normalised form.
        assert evidence in squash(PAY_BODY), f


def test_min_risk_filters(mail: Path) -> None:
    everything = check_json(mail, "ham.eml", "pay.eml")
    for level in ("low", "medium", "high"):
        result = run(
            "check", "--format", "json", "--min-risk", level, "ham.eml", "pay.eml", cwd=mail
        )
        assert result.returncode == 0, result.stderr
        shown = [r["source"] for r in records(result.stdout)]
        expected = [
            name
            for name, rec in everything.items()
            if LEVELS.index(str(rec["risk"])) >= LEVELS.index(level)
        ]
        assert shown == expected
    low = run("check", "-f", "json", "--min-risk", "low", "ham.eml", "pay.eml", cwd=mail)
    assert [r["source"] for r in records(low.stdout)] == ["pay.eml"]


def test_directory_and_mbox_sources(mail: Path) -> None:
    box = mail / "box.mbox"
    box.write_bytes(
        b"From ham@example.com Tue Mar  5 10:12:00 2024\n"
        + HAM
        + b"\nFrom pay@example.com Tue Mar  5 11:40:00 2024\n"
        + PAY
        + b"\n"
    )
    by_source = check_json(mail, "box.mbox", ".")
    assert list(by_source) == [
        "box.mbox#1",
        "box.mbox#2",
        os.path.join(".", "ham.eml"),
        os.path.join(".", "pay.eml"),
    ]
    assert by_source["box.mbox#1"]["message_id"] == "<ham-1@client.example>"
    assert by_source["box.mbox#1"]["risk"] == "none"
    assert "off_platform_payment" in by_source["box.mbox#2"]["categories"]


def test_malformed_message_is_reported_not_fatal(mail: Path) -> None:
    (mail / "garbage.eml").write_bytes(GARBAGE)
    (mail / "empty.eml").write_bytes(b"")
    result = run("check", "-f", "json", "garbage.eml", "empty.eml", "ham.eml", cwd=mail)
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    assert [r["source"] for r in recs] == ["garbage.eml", "empty.eml", "ham.eml"]
    for rec in recs[:2]:
        assert list(rec)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
        assert rec["risk"] in LEVELS
        if "defects" in rec:
            assert rec["defects"] and all(isinstance(d, str) for d in rec["defects"])
    assert "\x1b" not in result.stdout


# --------------------------------------------------------------------------- errors


def test_missing_file_exit_2_names_it(mail: Path) -> None:
    result = run("check", "-f", "json", "ham.eml", "no-such.eml", cwd=mail)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "no-such.eml", "No such file or directory")
    # what could be read was still checked
    assert [r["source"] for r in records(result.stdout)] == ["ham.eml"]


def test_bad_format_and_level_exit_2(mail: Path) -> None:
    bad_format = run("check", "--format", "xml", "ham.eml", cwd=mail)
    assert bad_format.returncode == 2
    assert_one_line_error(bad_format.stderr, "--format", "xml")
    assert bad_format.stdout == ""
    bad_level = run("check", "--min-risk", "extreme", "ham.eml", cwd=mail)
    assert bad_level.returncode == 2
    assert_one_line_error(bad_level.stderr, "--min-risk", "extreme")
    no_path = run("check", cwd=mail)
    assert no_path.returncode == 2
    assert_one_line_error(no_path.stderr, "PATH")


@pytest.mark.parametrize(
    "content",
    [
        "[[rule]\nid = \n",  # not TOML
        '[[rule]]\nid = "my.rule"\ncategory = "no_such_category"\nscore = 2.0\nall = ["hello"]\n',
    ],
    ids=["syntax", "bad-category"],
)
def test_bad_rules_file_exit_2_names_it(mail: Path, content: str) -> None:
    (mail / "bad-rules.toml").write_text(content)
    result = run("check", "--rules", "bad-rules.toml", "ham.eml", cwd=mail)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "rules file", "bad-rules.toml")
    assert result.stdout == ""


def test_missing_rules_file_exit_2(mail: Path) -> None:
    result = run("check", "--rules", "absent.toml", "ham.eml", cwd=mail)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "absent.toml")


# --------------------------------------------------------------------------- text format


def test_text_format_shows_explanation_and_neutralises_hostile_subject(mail: Path) -> None:
    (mail / "hostile.eml").write_bytes(HOSTILE)
    as_json = check_json(mail, "hostile.eml")["hostile.eml"]
    assert as_json["subject"] == HOSTILE_SUBJECT  # JSON keeps the data, escaped
    result = run("check", "hostile.eml", "ham.eml", cwd=mail)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b" not in out
    assert "\x1b[31m" not in out
    assert "\u202e" not in out
    assert "\\x1b[31mPAID" in out  # shown, harmlessly
    assert "hostile.eml" in out and "ham.eml" in out
    assert "Staging review on Thursday" in out
    flat = squash(out)
    for finding in as_json["findings"]:
        assert squash(str(finding["explanation"])) in flat
        assert finding["rule"] in flat
    assert as_json["risk"].upper() in out


def test_json_output_escapes_terminal_controls(mail: Path) -> None:
    (mail / "hostile.eml").write_bytes(HOSTILE)
    result = run("check", "-f", "json", "hostile.eml", cwd=mail)
    assert result.returncode == 0
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert records(result.stdout)[0]["subject"] == HOSTILE_SUBJECT


# --------------------------------------------------------------------------- console script


def test_console_script_and_version(mail: Path) -> None:
    version = run("--version", cwd=mail, script=True)
    assert version.returncode == 0
    assert re.fullmatch(r"inbox-guard \d+\.\d+\.\d+\S*\n", version.stdout)
    result = run("check", "--format", "json", "pay.eml", cwd=mail, script=True)
    assert result.returncode == 0, result.stderr
    (rec,) = records(result.stdout)
    assert "off_platform_payment" in rec["categories"]


# --------------------------------------------------------------------------- eval


def test_eval_labelled_corpus(mail: Path) -> None:
    corpus = mail / "corpus"
    corpus.mkdir()
    (corpus / "001-ham.eml").write_bytes(HAM)
    (corpus / "002-pay.eml").write_bytes(PAY)
    # Labelled as a dispute but says nothing of the kind: a guaranteed miss.
    (corpus / "003-said-dispute.eml").write_bytes(HAM.replace(b"ham-1@", b"ham-2@"))
    (corpus / "labels.csv").write_text(
        "file,categories,notes\n"
        "001-ham.eml,,benign\n"
        '002-pay.eml,off_platform_payment,"asks to pay via PayPal, avoid fees"\n'
        "003-said-dispute.eml,dispute,mislabelled on purpose\n"
    )
    (pay,) = check_json(corpus, "002-pay.eml").values()
    extras = sorted(set(pay["categories"]) - {"off_platform_payment"})  # type: ignore[arg-type]

    result = run("eval", corpus, cwd=mail)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tail = lines[-15:]
    # payment: TP 1; dispute: FN 1; each extra category of 002: FP 1 (F1 0)
    expected_macro = 1.0 / (2 + len(extras))
    assert tail[-3] == f"macro-F1: {expected_macro:.3f} (over {2 + len(extras)} of 7 categories)"
    assert tail[-2] == "risky recall: 0.500 (1/2 risky messages flagged at risk >= low)"
    assert tail[-1] == "ham flag rate: 0.000 (0/1 ham messages flagged at risk >= low)"
    payment = next(line for line in tail if line.startswith("off_platform_payment"))
    assert payment.split() == [
        "off_platform_payment",
        "1.000",
        "1.000",
        "1.000",
        "1",
        "0",
        "0",
        "1",
    ]
    dispute = next(line for line in tail if line.startswith("dispute "))
    assert dispute.split() == ["dispute", "n/a", "0.000", "0.000", "0", "0", "1", "1"]
    assert "  003-said-dispute.eml: missed dispute" in lines
    assert not any(line.startswith("  001-ham.eml") for line in lines)

    as_json = run("eval", corpus, "--format", "json", cwd=mail)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["risky_recall"] == 0.5
    assert data["ham_flag_rate"] == 0.0
    assert data["per_category"]["dispute"]["fn"] == 1


def test_eval_all_ham_and_errors(mail: Path) -> None:
    result = run("eval", "--all-ham", mail, cwd=mail)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "flag rate: 0.500 (1/2 ham messages flagged at risk >= low)"
    )
    assert any(line.startswith("  pay.eml: ") for line in result.stdout.splitlines())
    risky = run("eval", "--all-risky", "--min-risk", "high", mail, cwd=mail)
    assert risky.returncode == 0, risky.stderr
    assert "risky messages flagged at risk >= high" in risky.stdout.splitlines()[-1]

    no_labels = run("eval", mail, cwd=mail)
    assert no_labels.returncode == 2
    assert_one_line_error(no_labels.stderr, "labels.csv", str(mail))
    missing = run("eval", mail / "nowhere", cwd=mail)
    assert missing.returncode == 2
    assert_one_line_error(missing.stderr, "nowhere")
    (mail / "labels.csv").write_text("file,categories,notes\nham.eml,spam,\n")
    bad = run("eval", mail, cwd=mail)
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "labels.csv", "line 2", "spam")
