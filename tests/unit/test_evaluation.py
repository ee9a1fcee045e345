"""guard.evaluation: labels, confusion counts, precision/recall/F1 and the report."""

from __future__ import annotations

import pytest

from guard.evaluation import (
    CategoryStats,
    LabelsError,
    Outcome,
    category_stats,
    f1_score,
    macro_f1,
    misses,
    outcome_from_verdict,
    parse_labels,
    ratio,
    render_report,
    render_unlabelled,
    report_to_dict,
    summarize,
    summarize_unlabelled,
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
    tail = lines[-15:]
    payment = next(line for line in tail if line.startswith("off_platform_payment"))
    assert payment.split() == [
        "off_platform_payment",
        "1.000",
        "1.000",
        "1.000",
        "2",
        "0",
        "0",
        "2",
    ]
    dispute = next(line for line in tail if line.startswith("dispute"))
    assert dispute.split() == ["dispute", "n/a", "0.000", "0.000", "0", "0", "1", "1"]
    contact = next(line for line in tail if line.startswith("contact_request"))
    assert contact.split() == ["contact_request", "n/a", "n/a", "n/a", "0", "0", "0", "0"]


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
