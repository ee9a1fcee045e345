"""guard.evaluation: labels, confusion counts, precision/recall/F1 and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guard.cli import main
from guard.evaluation import (
    CategoryStats,
    LabelRow,
    LabelsError,
    Outcome,
    category_stats,
    corpus_row,
    f1_score,
    is_non_english,
    macro_f1,
    misses,
    note_tags,
    outcome_from_verdict,
    parse_label_rows,
    parse_labels,
    prose_tags,
    ratio,
    render_misses,
    render_report,
    render_table,
    render_unlabelled,
    report_to_dict,
    summarize,
    summarize_unlabelled,
    summary_rows,
    table_misses,
    table_to_dict,
    unlabelled_to_dict,
)
from guard.policy.model import CATEGORIES, Finding, Verdict

E = frozenset[str]


def outcome(file: str, expected: set[str], predicted: set[str], flagged: bool) -> Outcome:
    return Outcome(
        file=file,
        expected=frozenset(expected),
        risky=bool(expected),
        predicted=frozenset(predicted),
        risk="medium" if flagged else "none",
        score=3.0 if flagged else 0.0,
        flagged=flagged,
        evidence={c: (f"rule.{c}", f"evidence for {c}") for c in predicted},
    )


# The small corpus used below, and what it must add up to:
#   f1 payment          -> payment            flagged
#   f2 payment, dispute -> payment            flagged
#   f3 (ham)            -> scam               flagged
#   f4 (ham)            -> -                  not flagged
#   f5 phishing         -> -                  not flagged
OUTCOMES = [
    outcome("f1.eml", {"off_platform_payment"}, {"off_platform_payment"}, True),
    outcome("f2.eml", {"off_platform_payment", "dispute"}, {"off_platform_payment"}, True),
    outcome("f3.eml", set(), {"scam"}, True),
    outcome("f4.eml", set(), set(), False),
    outcome("f5.eml", {"phishing"}, set(), False),
]


def test_ratio_and_f1() -> None:
    assert ratio(1, 4) == 0.25
    assert ratio(0, 0) is None
    assert f1_score(0.75, 0.6) == pytest.approx(2 / 3)
    assert f1_score(None, 1.0) == 0.0
    assert f1_score(0.0, 0.0) == 0.0


def test_category_stats_properties() -> None:
    s = CategoryStats(tp=3, fp=1, fn=2)
    assert (s.support, s.predicted) == (5, 4)
    assert s.precision == 0.75
    assert s.recall == 0.6
    assert s.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert CategoryStats().f1 is None
    assert CategoryStats(fp=2).precision == 0.0
    assert CategoryStats(fp=2).recall is None
    assert CategoryStats(fp=2).f1 == 0.0


def test_category_stats_counts() -> None:
    stats = category_stats((o.expected or frozenset(), o.predicted) for o in OUTCOMES)
    assert list(stats) == list(CATEGORIES)
    assert stats["off_platform_payment"] == CategoryStats(tp=2, fp=0, fn=0)
    assert stats["dispute"] == CategoryStats(tp=0, fp=0, fn=1)
    assert stats["scam"] == CategoryStats(tp=0, fp=1, fn=0)
    assert stats["phishing"] == CategoryStats(tp=0, fp=0, fn=1)
    assert stats["personal_data"] == CategoryStats()


def test_macro_f1_leaves_out_categories_absent_from_both_sides() -> None:
    stats = category_stats((o.expected or frozenset(), o.predicted) for o in OUTCOMES)
    # payment 1.0, dispute 0.0, scam 0.0, phishing 0.0; the other three never occur.
    assert macro_f1(stats) == 0.25
    assert macro_f1({"a": CategoryStats(tp=3, fp=1, fn=2), "b": CategoryStats(tp=1)}) == (
        pytest.approx((2 / 3 + 1.0) / 2)
    )
    assert macro_f1({"a": CategoryStats()}) is None


def test_misses() -> None:
    found = misses(OUTCOMES)
    assert [(m.file, m.missed, m.extra) for m in found] == [
        ("f2.eml", ("dispute",), ()),
        ("f3.eml", (), ("scam",)),
        ("f5.eml", ("phishing",), ()),
    ]
    assert found[1].evidence == {"scam": ("rule.scam", "evidence for scam")}


def test_summarize_figures() -> None:
    report = summarize(OUTCOMES, "corpus", "low")
    assert (report.messages, report.ham, report.risky) == (5, 2, 3)
    assert report.risky_flagged == 2
    assert report.risky_recall == pytest.approx(2 / 3)
    assert report.ham_flagged == 1
    assert report.ham_flag_rate == 0.5
    assert report.macro_f1 == 0.25


def test_render_report_puts_summary_last() -> None:
    lines = render_report(summarize(OUTCOMES, "corpus", "low"))
    assert lines[-3:] == [
        "macro-F1: 0.250 (over 4 of 7 categories)",
        "risky recall: 0.667 (2/3 risky messages flagged at risk >= low)",
        "ham flag rate: 0.500 (1/2 ham messages flagged at risk >= low)",
    ]
    assert "  f2.eml: missed dispute" in lines
    assert '  f3.eml: extra scam (rule.scam: "evidence for scam")' in lines
    assert "  f5.eml: missed phishing" in lines
    # category -> precision, recall, F1, TP, FP, FN, support
    rows = {line.split()[0]: line.split()[1:] for line in lines[-15:] if line.strip()}
    assert rows["off_platform_payment"] == ["1.000", "1.000", "1.000", "2", "0", "0", "2"]
    assert rows["dispute"] == ["n/a", "0.000", "0.000", "0", "0", "1", "1"]
    assert rows["contact_request"] == ["n/a", "n/a", "n/a", "0", "0", "0", "0"]


def test_report_to_dict() -> None:
    data = report_to_dict(summarize(OUTCOMES, "corpus", "low"))
    assert data["macro_f1"] == 0.25
    assert data["risky_recall"] == 0.6667
    assert data["ham_flag_rate"] == 0.5
    assert data["per_category"]["scam"] == {
        "precision": 0.0,
        "recall": None,
        "f1": 0.0,
        "tp": 0,
        "fp": 1,
        "fn": 0,
        "support": 0,
    }
    assert [m["file"] for m in data["misses"]] == ["f2.eml", "f3.eml", "f5.eml"]


def test_outcome_from_verdict_picks_strongest_counted_finding() -> None:
    def finding(rule: str, category: str, score: float, evidence: str) -> Finding:
        return Finding(rule, category, score, "body", evidence, "why")

    verdict = Verdict(
        risk="medium",
        score=5.0,
        categories=("off_platform_payment",),
        findings=(
            finding("pay.weak", "off_platform_payment", 1.0, "weak"),
            finding("pay.strong", "off_platform_payment", 3.0, "pay you directly"),
            finding("contact.hint", "off_platform_contact", 0.5, "not counted"),
        ),
    )
    o = outcome_from_verdict("x.eml", frozenset({"off_platform_payment"}), verdict, "medium")
    assert o.flagged and o.risky
    assert o.predicted == {"off_platform_payment"}
    assert o.evidence == {"off_platform_payment": ("pay.strong", "pay you directly")}
    assert not outcome_from_verdict("x.eml", frozenset(), verdict, "high").flagged
    unknown = outcome_from_verdict("y.eml", None, verdict, "low", risky=True)
    assert unknown.risky and unknown.expected is None


def test_unlabelled_report() -> None:
    outcomes = [
        Outcome(
            "a.eml",
            None,
            False,
            frozenset({"scam", "phishing"}),
            "high",
            9.0,
            True,
            {"phishing": ("ph.link", "click here"), "scam": ("scam.x", "y")},
        ),
        Outcome("b.eml", None, False, frozenset(), "none", 0.0, False),
        Outcome("c.eml", None, False, frozenset({"scam"}), "low", 1.0, False),
        Outcome("d.eml", None, False, frozenset(), "none", 0.0, False),
    ]
    report = summarize_unlabelled(outcomes, "ham-dir", "ham", "medium")
    assert report.flag_rate == 0.25
    assert report.category_counts["scam"] == 2
    assert report.category_counts["phishing"] == 1
    assert report.risk_counts == {"none": 2, "low": 1, "medium": 0, "high": 1}
    lines = render_unlabelled(report)
    assert lines[-1] == "flag rate: 0.250 (1/4 ham messages flagged at risk >= medium)"
    assert '  a.eml: high 9: scam, phishing (ph.link: "click here")' in lines
    data = unlabelled_to_dict(report)
    assert data["flag_rate"] == 0.25
    assert data["flagged_files"][0]["categories"] == ["scam", "phishing"]


def test_parse_labels() -> None:
    text = (
        "file,categories,notes\n"
        "001.eml,,ham\n"
        '002.eml,off_platform_payment;dispute,"notes, with a comma"\n'
        "003.eml, scam ; ,\n"
        "\n"
    )
    assert parse_labels(text) == [
        ("001.eml", E()),
        ("002.eml", E({"off_platform_payment", "dispute"})),
        ("003.eml", E({"scam"})),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,labels\n", "labels.csv: line 1: expected the header"),
        ("", "labels.csv: line 1: expected the header"),
        ("file,categories,notes\na.eml,spam,\n", "labels.csv: line 2: unknown category 'spam'"),
        (
            "file,categories,notes\na.eml,,\na.eml,,\n",
            "labels.csv: line 3: 'a.eml' is listed twice",
        ),
        ("file,categories,notes\n,scam,\n", "labels.csv: line 2: empty file name"),
    ],
)
def test_parse_labels_errors(text: str, message: str) -> None:
    with pytest.raises(LabelsError) as info:
        parse_labels(text)
    assert str(info.value).startswith(message)


# --------------------------------------------------------------------------- notes tags


@pytest.mark.parametrize(
    ("notes", "tags"),
    [
        # tags first, then the description (writer a)
        ("sent; obfuscated; gives her number in words", {"sent", "obfuscated"}),
        ("lang=fr; design feedback; ordinary", {"lang=fr", "ordinary"}),
        # description first, tags last (writers b, c, e)
        ("Client spells the number in words; lang=es; obfuscated", {"lang=es", "obfuscated"}),
        ("replies with her ID number; sent lang=pl", {"sent", "lang=pl"}),
        # tags after a bar (writer d)
        ("Declines the call. | thread=rosa sent hardneg", {"thread=rosa", "sent", "hardneg"}),
        # prose is never a tag: a bar inside the description, a field of plain words
        ("asks to paste curl | sudo bash into Terminal; sender passes", set()),
        ("handles not obfuscated here; plain request", set()),
        ("Obfuscated; capitalised words are prose", set()),
        ("", set()),
    ],
)
def test_note_tags(notes: str, tags: set[str]) -> None:
    assert note_tags(notes) == tags


@pytest.mark.parametrize(
    ("notes", "tags"),
    [
        ("Obfuscation: 'w h a t s a p p' spaced out", {"obfuscated"}),
        ("Portuguese (BR), euphemism: 'zap' with a number", {"lang=pt"}),
        ("Hard negative (German, ISO-8859-1 QP): books via the platform", {"lang=de"}),
        ("Roman Urdu/English mix: move to the messenger", {"lang=ur"}),
        ("Sent BY the freelancer (Russian): agrees to move", {"lang=ru"}),
        # a language named later than the opening clause is about the content
        ("Hard negative: the client mentions a Spanish bank", set()),
        ("English only: nothing to see", set()),
    ],
)
def test_prose_tags(notes: str, tags: set[str]) -> None:
    assert prose_tags(notes) == tags


def test_is_non_english() -> None:
    assert is_non_english(frozenset({"lang=es"}))
    assert is_non_english(frozenset({"sent", "lang=mixed"}))
    assert not is_non_english(frozenset({"lang=en"}))
    assert not is_non_english(frozenset({"obfuscated"}))  # no tag: English


def test_parse_label_rows_tags_and_prose_fallback() -> None:
    tagged = (
        "file,categories,notes\n"
        'a.eml,off_platform_contact,"asks for a number; obfuscated; lang=it"\n'
        "b.eml,,Obfuscation: prose in a tagged file is not read as a tag\n"
    )
    assert parse_label_rows(tagged) == [
        LabelRow("a.eml", E({"off_platform_contact"}), E({"obfuscated", "lang=it"})),
        LabelRow("b.eml", E(), E()),
    ]
    untagged = (
        "file,categories,notes\n"
        "a.eml,off_platform_contact,Obfuscation: dotted letters\n"
        'b.eml,,"French: invoice through the platform, ordinary"\n'
    )
    assert [r.tags for r in parse_label_rows(untagged)] == [E({"obfuscated"}), E({"lang=fr"})]


# --------------------------------------------------------------------------- corpus table


def tagged(
    file: str, expected: set[str], predicted: set[str], flagged: bool, tags: set[str]
) -> Outcome:
    o = outcome(file, expected, predicted, flagged)
    top = next(iter(o.evidence.items()), None)
    return Outcome(
        o.file,
        o.expected,
        o.risky,
        o.predicted,
        o.risk,
        o.score,
        o.flagged,
        o.evidence,
        frozenset(tags),
        None if top is None else (top[1][0], top[0], top[1][1]),
    )


# A writer's corpus:
#   w1 PAY          -> PAY   flagged     obfuscated
#   w2 PAY, CON     -> CON   flagged     lang=es
#   w3 CON          -> -     no          obfuscated lang=pt
#   w4 PH           -> PH    flagged     lang=en
#   w5 (ham)        -> SC    flagged
#   w6 (ham)        -> -     no          lang=de
WRITER = [
    tagged("w1.eml", {"off_platform_payment"}, {"off_platform_payment"}, True, {"obfuscated"}),
    tagged(
        "w2.eml",
        {"off_platform_payment", "off_platform_contact"},
        {"off_platform_contact"},
        True,
        {"lang=es"},
    ),
    tagged("w3.eml", {"off_platform_contact"}, set(), False, {"obfuscated", "lang=pt"}),
    tagged("w4.eml", {"phishing"}, {"phishing"}, True, {"lang=en"}),
    tagged("w5.eml", set(), {"scam"}, True, set()),
    tagged("w6.eml", set(), set(), False, {"lang=de"}),
]


def test_corpus_row_figures() -> None:
    row = corpus_row("writers/x", WRITER)
    v = row.values
    assert row.messages == 6
    # PAY: tp 1 fn 1 -> F1 2/3; CON: tp 1 fn 1 -> 2/3; PH: 1; SC: fp 1 -> 0
    assert v["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    assert (v["risky_recall"], row.counts["risky_recall"]) == (0.75, (3, 4))
    assert (v["ham_flag_rate"], row.counts["ham_flag_rate"]) == (0.5, (1, 2))
    assert (v["obfuscated_recall"], row.counts["obfuscated_recall"]) == (0.5, (1, 2))
    # non-English risky: w2 (es, flagged) and w3 (pt, not); w4 is English, w6 is ham
    assert (v["non_english_recall"], row.counts["non_english_recall"]) == (0.5, (1, 2))
    assert v["recall.off_platform_payment"] == 0.5
    assert v["recall.off_platform_contact"] == 0.5
    assert v["recall.phishing"] == 1.0
    assert v["recall.scam"] is None  # never labelled: no recall
    assert row.counts["recall.off_platform_contact"] == (1, 2)


def test_corpus_row_unlabelled() -> None:
    ham = [
        Outcome("h1.eml", None, False, frozenset({"scam"}), "low", 1.0, True),
        Outcome("h2.eml", None, False, frozenset(), "none", 0.0, False),
        Outcome("h3.eml", None, False, frozenset(), "none", 0.0, False),
        Outcome("h4.eml", None, False, frozenset(), "none", 0.0, False),
    ]
    row = corpus_row("public/ham", ham, "ham")
    assert row.values["ham_flag_rate"] == 0.25
    assert row.values["macro_f1"] is None and row.values["risky_recall"] is None
    assert all(row.values[f"recall.{c}"] is None for c in CATEGORIES)
    risky = [Outcome(o.file, None, True, o.predicted, o.risk, o.score, o.flagged) for o in ham]
    row = corpus_row("public/risky", risky, "risky")
    assert row.values["risky_recall"] == 0.25
    assert row.values["ham_flag_rate"] is None and row.values["obfuscated_recall"] is None


def test_summary_rows_mean_min_pooled() -> None:
    a = corpus_row("writers/a", WRITER)
    b = corpus_row("writers/b", WRITER[:2])  # all flagged, no ham, no obfuscated miss
    mean, low, pooled = summary_rows("writers", [a, b], WRITER + WRITER[:2])
    assert mean.corpus == "writers (mean)" and mean.messages is None
    assert mean.values["risky_recall"] == pytest.approx((0.75 + 1.0) / 2)
    assert low.values["risky_recall"] == 0.75
    # b has no ham: the mean and the min are over the writers where the figure is defined
    assert mean.values["ham_flag_rate"] == 0.5 and low.values["ham_flag_rate"] == 0.5
    assert pooled.messages == 8
    assert pooled.values["risky_recall"] == pytest.approx(5 / 6)
    assert pooled.counts["obfuscated_recall"] == (2, 3)


def test_render_table_text_markdown_json() -> None:
    rows = [corpus_row("writers/x", WRITER), corpus_row("public/ham", WRITER[4:], "ham")]
    summaries = summary_rows("writers", rows[:1], WRITER)
    lines = render_table(rows, summaries)
    assert lines[0].split() == [
        "corpus", "msgs", "mF1", "risky", "ham%", "obf", "(n)", "non-en", "(n)",
        "PAY", "CON", "REQ", "PD", "SC", "PH", "DIS",
    ]  # fmt: skip
    assert lines[2].split() == [
        "writers/x", "6", "0.58", "0.75", "50.0%", "0.50", "(2)", "0.50", "(2)",
        "0.50", "0.50", "-", "-", "-", "1.00", "-",
    ]  # fmt: skip
    assert lines[3].split()[:5] == ["public/ham", "2", "-", "-", "50.0%"]
    assert lines[4].startswith("---")
    assert lines[5].split()[:3] == ["writers", "(mean)", "-"]
    assert len({len(line) for line in lines[:2]}) == 1
    md = render_table(rows, summaries, markdown=True)
    assert md[0].startswith("| corpus | msgs | mF1 |")
    assert md[2].startswith("| writers/x | 6 | 0.58 | 0.75 | 50.0% | 0.50 (2) |")
    assert md[-1].startswith("| *writers (pooled)* | 6 |")
    data = table_to_dict(rows, summaries, "low", {"writers/x": table_misses(WRITER)})
    first = data["corpora"][0]
    assert first["risky_recall"] == {"value": 0.75, "hits": 3, "total": 4}
    assert first["recall"]["phishing"] == {"value": 1.0, "hits": 1, "total": 1}
    assert data["summary"][0]["risky_recall"] == {"value": 0.75}
    assert [m["file"] for m in data["misses"]["writers/x"]] == ["w2.eml", "w3.eml", "w5.eml"]
    json.dumps(data)


def test_table_misses() -> None:
    found = table_misses(WRITER)
    assert [(m.file, m.kind) for m in found] == [
        ("w2.eml", "FN"),
        ("w3.eml", "FN"),
        ("w5.eml", "FP"),
    ]
    assert found[0].expected == ("off_platform_payment", "off_platform_contact")
    assert found[0].got == ("off_platform_contact",)
    wrong = tagged("w7.eml", {"dispute"}, {"scam"}, True, set())
    assert table_misses([wrong])[0].kind == "FN+FP"
    unlabelled = [
        Outcome("r1.eml", None, True, frozenset(), "none", 0.0, False),
        Outcome("r2.eml", None, True, frozenset({"scam"}), "low", 1.0, True),
        Outcome("h1.eml", None, False, frozenset({"scam"}), "low", 1.0, True),
    ]
    assert [(m.file, m.kind, m.expected) for m in table_misses(unlabelled)] == [
        ("r1.eml", "FN", ("risky",)),
        ("h1.eml", "FP", ()),
    ]
    lines = render_misses("writers/x", found, limit=2)
    assert lines[0] == "writers/x: 2 false negatives, 1 false positives"
    assert lines[1] == (
        "  FN w2.eml: expected PAY,CON; got CON (medium); top rule.off_platform_contact "
        '[CON] "evidence for off_platform_contact"'
    )
    assert lines[-1] == "  ... 1 more (--misses-limit 0 shows all)"


# --------------------------------------------------------------------------- eval --table


def _eml(n: int, subject: str, body: str) -> bytes:
    return (
        f"From: Client {n} <client{n}@mail.example>\n"
        "To: Sam Novak <sam.freelance@example.org>\n"
        f"Subject: {subject}\n"
        "Date: Tue, 05 Mar 2024 10:12:00 +0000\n"
        f"Message-ID: <t{n}@mail.example>\n"
        "Content-Type: text/plain; charset=utf-8\n\n" + body
    ).encode()


HAM_BODY = "Hi Sam,\n\nthe staging deploy looks good. See you at the review on Thursday.\n\nDana\n"
PAY_BODY = (
    "Hi Sam,\n\nthe scope looks right. Can you send me your PayPal so I pay you directly\n"
    "and we avoid the Upwork fees? I can pay the first half today.\n\nMark\n"
)


@pytest.fixture
def corpus_root(tmp_path: Path) -> Path:
    """writers/x (labelled, tagged), writers/y (tags after a bar), public/ham, public/risky
    with public/risky/phishing_pot inside."""
    root = tmp_path / "corpus"
    x = root / "writers" / "x"
    x.mkdir(parents=True)
    (x / "1-ham.eml").write_bytes(_eml(1, "Staging", HAM_BODY))
    (x / "2-pay.eml").write_bytes(_eml(2, "About the contract", PAY_BODY))
    # labelled a dispute but says nothing of the kind: a certain miss, tagged non-English
    (x / "3-dispute.eml").write_bytes(_eml(3, "Staging", HAM_BODY))
    (x / "labels.csv").write_text(
        "file,categories,notes\n"
        "1-ham.eml,,lang=fr; ordinary\n"
        "2-pay.eml,off_platform_payment,obfuscated; pays outside\n"
        "3-dispute.eml,dispute,lang=de; labelled a dispute on purpose\n"
    )
    y = root / "writers" / "y"
    y.mkdir()
    (y / "a.eml").write_bytes(_eml(4, "About the contract", PAY_BODY))
    (y / "labels.csv").write_text(
        "file,categories,notes\na.eml,off_platform_payment,Pays outside. | obfuscated\n"
    )
    ham = root / "public" / "ham" / "set"
    ham.mkdir(parents=True)
    for n in range(3):
        (ham / f"{n}.eml").write_bytes(_eml(10 + n, "Staging", HAM_BODY))
    risky = root / "public" / "risky"
    risky.mkdir()
    (risky / "r1.eml").write_bytes(_eml(20, "About the contract", PAY_BODY))
    (risky / "r2.eml").write_bytes(_eml(21, "Staging", HAM_BODY))
    # the phishing sample gets a row of its own and still counts in public/risky
    (risky / "phishing_pot").mkdir()
    (risky / "phishing_pot" / "p1.eml").write_bytes(_eml(22, "About the contract", PAY_BODY))
    return root


def _table(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if words and (words[0].startswith(("writers", "public")) and len(words) > 5):
            name = " ".join(words[:2]) if words[1].startswith("(") else words[0]
            rows[name] = words[2:] if words[1].startswith("(") else words[1:]
    return rows


def test_eval_table_cli(corpus_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--table", str(corpus_root), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert list(rows) == [
        "writers/x",
        "writers/y",
        "public/ham",
        "public/risky/phishing_pot",
        "public/risky",
        "writers (mean)",
        "writers (min)",
        "writers (pooled)",
    ]
    # x: PAY caught, the dispute missed; ham quiet; obfuscated 1/1; non-English 0/1
    assert rows["writers/x"][:10] == [
        "3", "0.50", "0.50", "0.0%", "1.00", "(1)", "0.00", "(1)", "1.00", "-",
    ]  # fmt: skip
    assert rows["writers/x"][-1] == "0.00"  # DIS
    assert rows["writers/y"][:5] == ["1", "1.00", "1.00", "-", "1.00"]
    assert rows["public/ham"][:4] == ["3", "-", "-", "0.0%"]
    assert rows["public/risky/phishing_pot"][:4] == ["1", "-", "1.00", "-"]
    assert rows["public/risky"][:4] == ["3", "-", "0.67", "-"]
    assert rows["writers (min)"][:3] == ["-", "0.50", "0.50"]
    assert rows["writers (pooled)"][:3] == ["4", "0.50", "0.67"]  # PAY 1, DIS 0

    # the same table from two processes, in the same order
    assert main(["eval", "--table", str(corpus_root), "--jobs", "2"]) == 0
    assert _table(capsys.readouterr().out) == rows

    assert main(["eval", "--table", str(corpus_root), "-j", "2", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["corpus"] for r in data["corpora"]] == list(rows)[:5]
    assert data["corpora"][0]["non_english_recall"] == {"value": 0.0, "hits": 0, "total": 1}

    assert main(["eval", "--table", str(corpus_root), "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| corpus |") and md[2].startswith("| writers/x | 3 |")

    assert main(["eval", "--table", str(corpus_root), "--misses"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "writers/x: 1 false negatives, 0 false positives" in out
    assert any(line.startswith("  FN 3-dispute.eml: expected DIS; got - (none)") for line in out)
    assert "public/risky: 1 false negatives, 0 false positives" in out
    assert any(line.startswith("  FN r2.eml: expected risky; got - (none)") for line in out)


def test_eval_table_absent_root_and_errors(
    tmp_path: Path, corpus_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "--table", str(tmp_path / "nowhere")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"corpus root '{tmp_path / 'nowhere'}' is absent: "
                                         "nothing to evaluate"]  # fmt: skip
    assert captured.err == ""

    # a broken labels file: one line naming it, the other corpora still measured, status 2
    (corpus_root / "writers" / "y" / "labels.csv").write_text("file,categories\na.eml,spam\n")
    (corpus_root / "writers" / "x" / "2-pay.eml").unlink()
    assert main(["eval", "--table", str(corpus_root), "--jobs", "1"]) == 2
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert len(errors) == 2
    assert "writers/y/labels.csv: line 2: unknown category 'spam'" in errors[0]
    assert "2-pay.eml" in errors[1]
    rows = _table(captured.out)
    assert "writers/y" not in rows and rows["writers/x"][0] == "2"

    assert main(["eval", str(corpus_root / "writers" / "x"), "--format", "markdown"]) == 2
    assert "--format markdown needs --table" in capsys.readouterr().err


def test_eval_corpus_engine_failure_and_unreadable_labels(
    corpus_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``eval CORPUS_DIR`` (guard.evaluation.run): an engine failure names the message and
    exits 1 with nothing on stdout; a labels file that is not UTF-8 is one line, status 2."""
    corpus = corpus_root / "writers" / "x"

    def broken(rules: object, msg: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("guard.evaluation.run.evaluate", broken)
    assert main(["eval", str(corpus)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "'1-ham.eml': internal error: RuntimeError: boom" in captured.err
    monkeypatch.undo()

    (corpus / "labels.csv").write_bytes(b"file,categories\n\xff.eml,\n")
    assert main(["eval", str(corpus)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"labels file '{corpus / 'labels.csv'}': not UTF-8 text" in captured.err
