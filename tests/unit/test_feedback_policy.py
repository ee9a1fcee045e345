"""The policy side of the feedback loop: trusted senders and reported campaigns."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest

from guard.mail import Address, AuthResults, Link, Message
from guard.policy import evaluate, level_at_least, load_rules
from guard.policy.feedback import (
    CAMPAIGN_RULE,
    REDUCED_NOTE,
    Feedback,
    ReportedCampaign,
    apply_feedback,
    best_campaign,
    category_totals,
    message_fingerprint,
)
from guard.policy.fingerprint import SIMILAR, Fingerprint, fingerprint, similarity
from guard.policy.learned import Weights

CLIENT = Address("Dana Whitfield", "dana@whitfield-studio.example")
UPWORK = Address("Upwork", "donotreply@upwork.com")
UPWORK_AUTH = AuthResults(spf="pass", dkim="pass", dmarc="pass", dkim_domains=("upwork.com",))
REPORTED_ON = datetime.date(2026, 11, 30)


@pytest.fixture(scope="module")
def rules():
    return load_rules()


TASK_SCAM = """Hi Anna,

I am Laura Bennett, talent partner at Crestline Digital. Your profile stood out to us and we
have a flexible online role that fits around your projects. You review hotel listings in our
partner app so they rank higher for travellers. Every batch of reviews takes about twenty
minutes and pays between $120 and $380 a day, paid out every evening. To open your first
premium batch you add a small balance of $45 to your work account, which comes back with
your first payout.

Message our onboarding desk on Telegram at @crestline_onboard or sign up at
https://crestline-work.example.com/start?ref=LB22 and use the code CL-5531.

Warm regards,
Laura Bennett
Talent Partner, Crestline Digital
"""

# The same campaign: another sender, greeting, names, amounts, handle, link and signature.
TASK_SCAM_AGAIN = """Dear Mr. Okafor,

I am Victor Hale, talent partner at Bluewave Media. Your profile stood out to us and we have a
flexible online role that fits around your projects. You review hotel listings in our partner
app so they rank higher for travellers. Every batch of reviews takes about fifteen minutes and
pays between $200 and $540 a day, paid out every evening. To open your first premium batch you
add a small balance of $70 to your work account, which comes back with your first payout.

Message our onboarding desk on Telegram at @bluewave_team or sign up at
http://bw-jobs.example.net/r/7781 and use the code BW-0042.

Best,
Victor
"""

UNRELATED = """Hi Anna,

Thanks for the first round of sketches for the cookbook cover. The second one with the
hand-drawn lemons is our favourite; could you try it with a warmer background and the title
in the serif font from the brief? We would like to see two variations by Friday if that
works for you, and then we can talk about the inside pages.

Best,
Marta
"""


def scam_from(sender: Address, text: str, subject: str = "Flexible online role") -> Message:
    return Message(from_=sender, subject=subject, text=text)


def reported(text: str, categories: tuple[str, ...] = ("scam",)) -> Feedback:
    msg = scam_from(Address("Laura Bennett", "laura@crestline-digital.example"), text)
    return Feedback(
        campaigns=(ReportedCampaign(message_fingerprint(msg), REPORTED_ON, categories),)
    )


def campaign_findings(verdict):
    return [f for f in verdict.findings if f.rule == CAMPAIGN_RULE]


# ------------------------------------------------------------------- reported campaigns


def test_a_near_duplicate_from_another_sender_is_flagged_with_the_report_date(rules) -> None:
    feedback = reported(TASK_SCAM, ("off_platform_contact", "scam"))
    msg = scam_from(Address("Victor Hale", "victor.hale@bluewave-media.example"), TASK_SCAM_AGAIN)
    before = evaluate(rules, msg)
    after = apply_feedback(rules, before, msg, feedback)
    (found,) = campaign_findings(after)
    assert found.category == "off_platform_contact"  # the reported message's first category
    assert found.where == "body"
    assert found.evidence.startswith("similar to a message you reported on 2026-11-30 (")
    assert found.evidence.endswith(" %)")
    assert "reported" in found.explanation
    assert level_at_least(after.risk, "medium")
    assert "off_platform_contact" in after.categories
    # The campaign's score adds to the judge's own total for the category (summing the
    # listed findings again would count context weights no finding shows).
    assert before.categories == ("off_platform_contact",)
    assert after.score == round(before.score + rules.levels["medium"], 2)


def test_the_campaign_finding_alone_reaches_medium_on_otherwise_harmless_text(rules) -> None:
    # A bland campaign text the rules find nothing in: only the report makes it risky.
    bland = (
        "Hello,\n\nWe are updating our list of partner studios for the next season and would "
        "like to include your portfolio in the catalogue that goes out to our members. Please "
        "reply with a short description of your services and three recent projects so our "
        "editors can prepare your page before the end of the month.\n\nKind regards,\nTom"
    )
    feedback = reported(bland, ())
    other = bland.replace("Tom", "Sofia Marquez").replace("three", "four")
    msg = Message(from_=CLIENT, subject="Partner catalogue", text=other)
    before = evaluate(rules, msg)
    assert before.risk == "none"
    after = apply_feedback(rules, before, msg, feedback)
    (found,) = campaign_findings(after)
    assert found.category == "scam"  # the reported message had no category
    assert found.score >= rules.levels["medium"]
    assert after.risk == "medium" and after.categories == ("scam",)


def test_an_unrelated_message_is_not_flagged(rules) -> None:
    feedback = reported(TASK_SCAM)
    msg = Message(from_=CLIENT, subject="Cookbook cover", text=UNRELATED)
    before = evaluate(rules, msg)
    assert apply_feedback(rules, before, msg, feedback) is before


def test_the_best_match_wins_and_only_one_finding_is_added(rules) -> None:
    weak = reported(UNRELATED).campaigns[0]
    strong = replace(reported(TASK_SCAM, ("dispute",)).campaigns[0], feedback_id=7)
    second = replace(strong, reported_on=datetime.date(2026, 12, 1), categories=("scam",))
    feedback = Feedback(campaigns=(weak, strong, second))
    msg = scam_from(CLIENT, TASK_SCAM_AGAIN)
    after = apply_feedback(rules, evaluate(rules, msg), msg, feedback)
    (found,) = campaign_findings(after)
    assert "2026-11-30" in found.evidence  # equals: the first reported wins
    again = apply_feedback(rules, after, msg, feedback)
    assert len(campaign_findings(again)) == 1


def test_a_reply_quoting_the_campaign_is_not_similar(rules) -> None:
    # The freelancer's (or a client's) answer that quotes the scam under "... wrote:".
    quoted = "\n".join(f"> {line}" for line in TASK_SCAM.splitlines())
    text = (
        "No thank you, I only take work through the platform.\n\n"
        f"On Mon, 30 Nov 2026 at 10:02, Laura Bennett <laura@crestline-digital.example> wrote:\n"
        f"{quoted}\n"
    )
    msg = Message(
        from_=CLIENT,
        subject="Re: Flexible online role",
        text=text,
        in_reply_to="<scam-1@crestline-digital.example>",
    )
    assert message_fingerprint(msg).shingles < 20  # the subject and the one new line
    before = evaluate(rules, msg)
    assert apply_feedback(rules, before, msg, reported(TASK_SCAM)) is before


def test_the_subject_reply_prefix_does_not_change_the_fingerprint() -> None:
    a = scam_from(CLIENT, TASK_SCAM, subject="Flexible online role")
    b = scam_from(CLIENT, TASK_SCAM, subject="Re: Fwd: Flexible online role")
    assert message_fingerprint(a) == message_fingerprint(b)


def test_a_platforms_authenticated_notification_is_never_similar(rules) -> None:
    notice = (
        "Hi Anna,\n\nYour weekly summary is ready. You have two active contracts, one proposal "
        "waiting for a reply and a payment of $350.00 pending release on Friday. Review your "
        "contracts and messages in your dashboard to keep every project on track.\n\nUpwork"
    )
    fake = Message(
        from_=Address("Upwork", "alerts@upwork-summary.example"),
        subject="Weekly summary",
        text=notice,
    )
    feedback = Feedback(
        campaigns=(ReportedCampaign(message_fingerprint(fake), REPORTED_ON, ("phishing",)),)
    )
    real = Message(from_=UPWORK, auth=UPWORK_AUTH, subject="Weekly summary", text=notice)
    before = evaluate(rules, real)
    assert apply_feedback(rules, before, real, feedback) is before
    # The same text from anyone else (or Upwork's address failing authentication) matches.
    spoofed = replace(real, auth=AuthResults(dmarc="fail", spf="fail"))
    assert campaign_findings(apply_feedback(rules, evaluate(rules, spoofed), spoofed, feedback))


def test_a_too_short_fingerprint_never_matches(rules) -> None:
    short = fingerprint("Re: files\nGot them, thanks!")
    assert short.too_short
    feedback = Feedback(campaigns=(ReportedCampaign(short, REPORTED_ON, ("scam",)),))
    msg = Message(from_=CLIENT, subject="Re: files", text="Got them, thanks!")
    before = evaluate(rules, msg)
    assert apply_feedback(rules, before, msg, feedback) is before


def test_a_stored_fingerprint_round_trips_and_still_matches(rules) -> None:
    stored = reported(TASK_SCAM).campaigns[0]
    back = replace(stored, fingerprint=Fingerprint.from_text(stored.fingerprint.to_text()))
    msg = scam_from(CLIENT, TASK_SCAM_AGAIN)
    after = apply_feedback(rules, evaluate(rules, msg), msg, Feedback(campaigns=(back,)))
    assert campaign_findings(after)


# ------------------------------------------------------------------------ trusted senders

WHATSAPP = (
    "Hi Anna,\n\nCan we move this chat to WhatsApp? My number is +1 555 201 4478, message me "
    "there.\n\nDana"
)


def trusting(*categories: str, address: str = CLIENT.addr) -> Feedback:
    return Feedback(trusted={address.casefold(): frozenset(categories)})


def test_a_trusted_senders_request_counts_less_and_says_why(rules) -> None:
    msg = Message(from_=CLIENT, subject="Quick call", text=WHATSAPP)
    before = evaluate(rules, msg)
    assert before.risk == "high" and before.categories == ("off_platform_contact",)
    # The address is matched case-insensitively.
    after = apply_feedback(
        rules,
        before,
        msg,
        trusting("off_platform_contact", address="Dana@Whitfield-Studio.example"),
    )
    assert not level_at_least(after.risk, "medium")  # no longer labelled at the default
    assert after.score < before.score
    reduced = [f for f in after.findings if f.category == "off_platform_contact"]
    assert reduced and all(f.explanation.startswith(REDUCED_NOTE) for f in reduced)
    old = {f.rule: f.score for f in before.findings}
    assert all(f.score < old[f.rule] for f in reduced)
    assert [f.evidence for f in reduced] == [
        f.evidence for f in before.findings if f.category == "off_platform_contact"
    ]


def test_a_trusted_senders_strongest_request_does_not_make_its_category_count(rules) -> None:
    """However many findings of the trusted kind pile up, the category stays below "low":
    the sender is not labelled for it again."""
    text = (
        "The platform takes a big cut from both of us. I can pay you directly through PayPal "
        "so we avoid the fees, just send me your PayPal email. Or bank transfer, or Wise, "
        "whatever you prefer, as long as it is outside the site and we skip their commission."
    )
    msg = Message(from_=CLIENT, subject="Payment outside the site", text=text)
    before = evaluate(rules, msg)
    assert before.risk == "high" and "off_platform_payment" in before.categories
    after = apply_feedback(rules, before, msg, trusting("off_platform_payment"))
    assert "off_platform_payment" not in after.categories
    assert after.risk == "none"


def test_a_sender_trusted_for_another_category_is_unchanged(rules) -> None:
    msg = Message(from_=CLIENT, subject="Quick call", text=WHATSAPP)
    before = evaluate(rules, msg)
    assert apply_feedback(rules, before, msg, trusting("off_platform_payment")) is before
    assert (
        apply_feedback(rules, before, msg, trusting("off_platform_contact", address="x@y.example"))
        is before
    )


def test_the_same_senders_phishing_is_unchanged(rules) -> None:
    # A lookalike link from the trusted address (a hijacked account), asking to move to
    # WhatsApp too: nothing counts less, phishing included.
    text = (
        "Hi Anna,\n\nYour Upwork account is on hold. Sign in at the link below to verify your "
        "identity within 24 hours or it will be closed, then message me on WhatsApp at "
        "+1 555 201 4478.\n\nhttps://upw0rk-verify.example/login\n"
    )
    link = Link("Verify your account", "https://upw0rk-verify.example/login")
    msg = Message(from_=CLIENT, subject="Your account", text=text, links=(link,))
    before = evaluate(rules, msg)
    assert "phishing" in before.categories
    feedback = trusting(*("off_platform_contact", "phishing", "personal_data", "scam"))
    assert apply_feedback(rules, before, msg, feedback) is before


def test_a_trusted_sender_spoofing_a_brand_keeps_its_phishing(rules) -> None:
    msg = Message(from_=Address("Upwork Support", CLIENT.addr), subject="Quick call", text=WHATSAPP)
    before = evaluate(rules, msg)
    assert "phishing" in before.categories
    assert apply_feedback(rules, before, msg, trusting("off_platform_contact")) is before


@pytest.mark.parametrize(
    "auth",
    [
        AuthResults(dmarc="fail"),
        AuthResults(dmarc="quarantine"),
        AuthResults(spf="softfail"),
        AuthResults(spf="fail", dkim="pass", dkim_domains=("whitfield-studio.example",)),
        AuthResults(dkim="fail"),
    ],
    ids=["dmarc-fail", "dmarc-quarantine", "spf-softfail", "spf-fail", "dkim-fail"],
)
def test_a_trusted_sender_failing_authentication_is_not_reduced(rules, auth) -> None:
    msg = Message(from_=CLIENT, subject="Quick call", text=WHATSAPP, auth=auth)
    before = evaluate(rules, msg)
    after = apply_feedback(rules, before, msg, trusting("off_platform_contact"))
    assert not any(f.explanation.startswith(REDUCED_NOTE) for f in after.findings)
    assert (after.risk, after.score, after.categories) == (
        before.risk,
        before.score,
        before.categories,
    )


def test_a_messenger_link_is_not_reduced(rules) -> None:
    text = "Hi Anna,\n\nLet's continue here, it is faster: https://wa.me/15552014478\n\nDana"
    link = Link("https://wa.me/15552014478", "https://wa.me/15552014478")
    msg = Message(from_=CLIENT, subject="Faster", text=text, links=(link,))
    before = evaluate(rules, msg)
    after = apply_feedback(rules, before, msg, trusting("off_platform_contact"))
    for f in after.findings:
        if f.where == "links":
            assert not f.explanation.startswith(REDUCED_NOTE)
            assert f in before.findings


def test_trust_and_a_report_together(rules) -> None:
    # A trusted client forwards-in-their-own-words the reported scam: the report still wins.
    msg = scam_from(CLIENT, TASK_SCAM_AGAIN)
    feedback = Feedback(
        trusted={CLIENT.addr: frozenset(("scam", "off_platform_contact"))},
        campaigns=reported(TASK_SCAM).campaigns,
    )
    after = apply_feedback(rules, evaluate(rules, msg), msg, feedback)
    assert campaign_findings(after) and level_at_least(after.risk, "medium")


# ------------------------------------------------------------------- empty, re-summing


def test_empty_feedback_returns_the_same_verdict(rules) -> None:
    msg = Message(from_=CLIENT, subject="Quick call", text=WHATSAPP)
    before = evaluate(rules, msg)
    assert Feedback().empty
    assert apply_feedback(rules, before, msg, Feedback()) is before
    assert not Feedback(trusted={"a@b.example": frozenset()}).empty


def test_no_campaigns_means_no_fingerprint(rules, monkeypatch) -> None:
    import guard.policy.feedback as fb

    def boom(_msg: Message) -> Fingerprint:
        raise AssertionError("fingerprinted without a campaign")

    monkeypatch.setattr(fb, "message_fingerprint", boom)
    msg = scam_from(CLIENT, TASK_SCAM_AGAIN)
    before = evaluate(rules, msg)
    assert apply_feedback(rules, before, msg, trusting("dispute", address="o@p.example")) is before


@pytest.mark.parametrize(
    "text",
    [
        WHATSAPP,
        TASK_SCAM,
        UNRELATED,
        "Hi,\n\nplease pay me via PayPal outside of Upwork to avoid the fees.",
    ],
    ids=["whatsapp", "task-scam", "unrelated", "paypal"],
)
def test_category_totals_give_the_judges_own_verdict_back(rules, text) -> None:
    # Summing the judge's findings again would not (context weights show in no finding):
    # the totals apply_feedback starts from must be the judge's.
    for msg in (
        Message(from_=CLIENT, subject="Hello", text=text),
        Message(from_=CLIENT, subject="Re: Hello", text=text, in_reply_to="<a@b.example>"),
    ):
        verdict = evaluate(rules, msg)
        totals = category_totals(rules, msg, verdict)
        counting = tuple(c for c, t in totals.items() if t >= rules.levels["low"])
        assert set(counting) == set(verdict.categories)
        assert round(sum(totals[c] for c in counting), 2) == verdict.score


def test_without_learned_weights_the_findings_are_summed(rules) -> None:
    msg = Message(from_=CLIENT, subject="Quick call", text=WHATSAPP)
    none = Weights()
    before = evaluate(rules, msg, none)
    after = apply_feedback(rules, before, msg, trusting("off_platform_contact"), weights=none)
    assert after.score < before.score
    assert after.score == round(
        sum(f.score for f in after.findings if f.category in after.categories), 2
    )


def test_what_was_unchecked_stays_unchecked(rules) -> None:
    msg = Message(
        from_=CLIENT, subject="Quick call", text=WHATSAPP, unchecked=("text cut at 1 MB",)
    )
    before = evaluate(rules, msg)
    assert before.unchecked
    after = apply_feedback(rules, before, msg, trusting("off_platform_contact"))
    assert after.unchecked == before.unchecked
    assert after.findings[-1].rule == "guard.unchecked"


def test_the_hash_index_finds_what_comparing_every_campaign_finds() -> None:
    sentences = TASK_SCAM.split(". ")
    variants = [". ".join(sentences[:k] + sentences[k + 1 :]) for k in range(len(sentences))]
    variants += [". ".join(sentences[k:]) for k in range(1, len(sentences))]
    variants += [UNRELATED, WHATSAPP, TASK_SCAM_AGAIN, "Re: files\nGot them, thanks!"]
    campaigns = tuple(
        ReportedCampaign(fingerprint(f"Subject\n{t}"), REPORTED_ON, (), i)
        for i, t in enumerate(variants)
    )
    matched = 0
    for text in [*variants, TASK_SCAM]:
        msg = Message(from_=CLIENT, subject="Subject", text=text)
        fp = message_fingerprint(msg)
        brute = None
        for c in campaigns:
            s = similarity(fp, c.fingerprint)
            if s >= SIMILAR and (brute is None or s > brute[1]):
                brute = (c, s)
        assert best_campaign(msg, campaigns) == brute
        matched += brute is not None
    assert matched >= len(variants) - 1  # each matches at least itself, but the short one
