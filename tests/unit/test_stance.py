"""The freelancer's stance in a sent reply (guard/policy/stance.py): decline, agree or
neither, in en es pt fr de ru (and it, nl), judged on the new text only; and the wording of
the escalation rungs (guard/reports/templates/drafts/). Every message is written here."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from guard.mail import Address, Message
from guard.policy import Verdict, evaluate, load_rules
from guard.policy.rules import RuleSet
from guard.policy.stance import (
    AGREE,
    DECLINE,
    MAX_STANCE_CHARS,
    NEUTRAL,
    reply_stance,
    stance_concepts,
)

ATTRIBUTION = "On Tue, 3 Jun 2025 at 10:02, Sam Client <sam@client.example> wrote:"


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules()


def sent(text: str, html: str = "", reply: bool = True) -> Message:
    """A message from the freelancer's Sent folder."""
    return Message(
        from_=Address("Nadia", "nadia@work.example"),
        to=(Address("Sam Client", "sam@client.example"),),
        subject="Re: the project" if reply else "the project",
        in_reply_to="<req@client.example>" if reply else "",
        text=text,
        html_text=html,
    )


def stance_of(rules: RuleSet, text: str, **kw: object) -> str:
    msg = sent(text, **kw)  # type: ignore[arg-type]
    return reply_stance(rules, msg, evaluate(rules, msg))


# (language, expected, new text): per language at least two declines, an agreement and a
# plain work reply.
CASES = [
    # en
    ("en", DECLINE, "Hi Sam, thanks for the kind words. I can't switch to WhatsApp for client "
     "work; all of our messages and files stay on Upwork so we're both covered."),
    ("en", DECLINE, "I appreciate the idea of saving on fees, but payment outside Fiverr isn't "
     "something I can accept. Please place the order there and I'll start right away."),
    ("en", DECLINE, "I won't take PayPal for this job, sorry. Upwork's escrow protects us both."),
    ("en", DECLINE, "Let's keep it here, please - it keeps everything in one place."),
    ("en", DECLINE, "Moving the payment off the platform would break Upwork's terms of service."),
    ("en", AGREE, "Sure, that's easier for me too - add me on WhatsApp, +44 7700 900123."),
    ("en", AGREE, "Okay, pay me by PayPal then, it's quicker."),
    ("en", AGREE, "ok, add me on WhatsApp"),
    ("en", AGREE, "Don't worry, I'll add you on Telegram tonight."),
    ("en", AGREE, "Happy to skip the fee: my PayPal is nadia.pay@example.net"),
    ("en", NEUTRAL, "Draft attached, see you Friday."),
    ("en", NEUTRAL, "The PayPal checkout is live on staging and refunds now go through the "
     "webhook; make sure to test a partial refund."),
    ("en", NEUTRAL, "No problem, I'll send the second round of icons tomorrow."),
    # es
    ("es", DECLINE, "Hola Lucas, te agradezco la confianza, pero no trabajo por WhatsApp con "
     "clientes; prefiero que sigamos hablando por Workana."),
    ("es", DECLINE, "Gracias por la propuesta. Los pagos fuera de la plataforma no están "
     "permitidos, así que todo el pago se hace por Workana."),
    ("es", DECLINE, "Lo siento, pero no uso PayPal para proyectos de la plataforma."),
    ("es", AGREE, "¡Claro! Escríbeme al WhatsApp +34 611 222 333 y lo vemos."),
    ("es", AGREE, "Vale, te paso mi Telegram y seguimos por allí: @marta_disena"),
    ("es", NEUTRAL, "Te mando el segundo borrador el jueves, un saludo."),
    # pt
    ("pt", DECLINE, "Oi Bruno, obrigado pelo contato. Não passo meu WhatsApp antes de fechar o "
     "contrato; vamos conversar pela plataforma."),
    ("pt", DECLINE, "Prefiro manter todos os pagamentos pela Workana, é mais seguro para nós "
     "dois."),
    ("pt", AGREE, "Combinado, pode me pagar por Pix, a chave é meu e-mail: ana.dev@example.net"),
    ("pt", AGREE, "Beleza, me chama no zap que a gente acerta os detalhes."),
    ("pt", NEUTRAL, "Segue em anexo a versão revisada do logo."),
    # fr
    ("fr", DECLINE, "Bonjour Claire, merci pour votre confiance. Je ne travaille pas via "
     "WhatsApp, restons sur Malt s'il vous plaît."),
    ("fr", DECLINE, "Je préfère garder tous les paiements sur la plateforme : un virement direct "
     "serait contraire aux conditions de Malt."),
    ("fr", AGREE, "D'accord, ajoutez-moi sur Telegram : @lea_design"),
    ("fr", NEUTRAL, "Je vous envoie la maquette finale demain matin."),
    ("fr", NEUTRAL, "Pas de problème, je corrige la typo et je renvoie le fichier."),
    # de
    ("de", DECLINE, "Hallo Jonas, danke für das Angebot. Eine Zahlung per PayPal außerhalb von "
     "Upwork kann ich leider nicht annehmen."),
    ("de", DECLINE, "Die Kommunikation läuft bei mir ausschließlich über die Plattform, lass uns "
     "bitte hier weiterschreiben."),
    ("de", AGREE, "Klar, schreib mir einfach auf WhatsApp: +49 151 2345678."),
    ("de", AGREE, "Kein Problem, überweisen Sie den Rest direkt auf mein Konto, IBAN DE02 1203 "
     "0000 0000 2020 51."),
    ("de", NEUTRAL, "Anbei der überarbeitete Entwurf, bis Freitag."),
    # ru
    ("ru", DECLINE, "Здравствуйте, Олег! Спасибо за предложение, но я не перехожу в Telegram до "
     "начала контракта, давайте общаться здесь."),
    ("ru", DECLINE, "Оплату вне биржи я не принимаю: все расчёты только через площадку."),
    ("ru", DECLINE, "Нет, спасибо. Давайте оставим всё на бирже."),
    ("ru", AGREE, "Хорошо, вот мой WhatsApp: +7 912 345 67 89, пишите."),
    ("ru", AGREE, "Ок, давайте перейдём в Telegram, добавьте меня."),
    ("ru", NEUTRAL, "Отправляю исправленный макет, жду ваших комментариев."),
    # it, nl
    ("it", DECLINE, "Grazie, ma non uso WhatsApp per lavoro: restiamo sulla piattaforma."),
    ("it", AGREE, "Va bene, scrivimi su WhatsApp al +39 333 123 4567."),
    ("nl", DECLINE, "Bedankt, maar ik werk niet via WhatsApp; laten we het hier houden."),
    ("nl", NEUTRAL, "Hierbij het aangepaste ontwerp, tot vrijdag."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("lang", "expected", "text"),
    CASES,
    ids=[f"{lang}-{expected}-{i}" for i, (lang, expected, _) in enumerate(CASES)],
)
def test_reply_stance_in_each_language(rules: RuleSet, lang: str, expected: str, text: str) -> None:
    assert stance_of(rules, f"{text}\n\nNadia") == expected


def test_every_required_language_has_declines_an_agreement_and_a_neutral_reply() -> None:
    for lang in ("en", "es", "pt", "fr", "de", "ru"):
        got = [expected for case_lang, expected, _ in CASES if case_lang == lang]
        assert got.count(DECLINE) >= 2 and AGREE in got and NEUTRAL in got, lang


# A refusal that names the messenger or the payment method is a decline, not an agreement.
@pytest.mark.parametrize(
    "text",
    [
        "I can't move to WhatsApp, sorry.",
        "Thanks for suggesting PayPal. Unfortunately I can't.",
        "No puedo pasarme a WhatsApp, sigamos por la plataforma.",
        "Não aceito pagamento por PayPal, só pela plataforma.",
        "Ich nutze kein WhatsApp für Kundenprojekte.",
        "Je n'accepte pas PayPal pour les missions Malt.",
        "Я не пользуюсь WhatsApp для работы с заказчиками.",
    ],
)
def test_a_decline_naming_whatsapp_or_paypal_is_a_decline(rules: RuleSet, text: str) -> None:
    assert stance_of(rules, text) == DECLINE


@pytest.mark.parametrize(
    ("expected", "answer", "quoted"),
    [
        (DECLINE, "No, let's keep it here.", "> can we use WhatsApp? it's faster for me"),
        (DECLINE, "No thanks, I'd rather not.", "> I can pay you by PayPal and skip the fee"),
        (DECLINE, "Нет, спасибо.", "> Давайте перейдём в Telegram?"),
        (DECLINE, "Não, obrigado.", "> Posso te pagar por fora, via Pix?"),
        (NEUTRAL, "The homepage mockup is attached; I'll start on the product page tomorrow.",
         "> can we use WhatsApp?\n> also how is the mockup going"),
        (NEUTRAL, "Le devis est en pièce jointe, je commence lundi.",
         "> On peut passer sur WhatsApp ?"),
        (AGREE, "Yes, that's fine with me. I'll close the Upwork contract at the end of the week.",
         "> Let's end the contract and I'll pay you directly by bank transfer from now on."),
    ],
)  # fmt: skip
def test_a_reply_under_a_quoted_request(
    rules: RuleSet, expected: str, answer: str, quoted: str
) -> None:
    assert stance_of(rules, f"{answer}\n\nNadia\n\n{ATTRIBUTION}\n{quoted}\n") == expected


def test_a_quoted_request_is_not_the_freelancers_agreement(rules: RuleSet) -> None:
    quoted = "> Add me on WhatsApp +44 7700 900456 and I pay you by PayPal directly."
    assert stance_of(rules, f"Thanks, I'll look at the brief.\n\n{ATTRIBUTION}\n{quoted}") == (
        NEUTRAL
    )


def test_mixed_reply_takes_the_later_statement_unless_a_handle_is_given(rules: RuleSet) -> None:
    assert (
        stance_of(
            rules, "Sure, I understand the fees are high, but I can't take payment via PayPal."
        )
        == DECLINE
    )
    assert (
        stance_of(
            rules, "I usually keep everything on Upwork, but sure: my WhatsApp is +44 7700 900123."
        )
        == AGREE
    )


def test_the_verdict_decides_a_bare_number(rules: RuleSet) -> None:
    """A number with nothing around it is an agreement only when the engine saw an
    off-platform move in the same text."""
    msg = sent("Sure thing: 07700 900123")
    quiet = Verdict(risk="none", score=0.0, categories=(), findings=())
    flagged = Verdict(risk="high", score=9.0, categories=("off_platform_contact",), findings=())
    assert reply_stance(rules, msg, quiet) == NEUTRAL
    assert reply_stance(rules, msg, flagged) == AGREE


def test_the_html_part_is_read_when_there_is_no_plain_text(rules: RuleSet) -> None:
    assert stance_of(rules, "", html="Sorry, I can't move to Telegram. Let's keep it here.") == (
        DECLINE
    )


def test_only_the_first_chars_of_the_new_text_are_read(rules: RuleSet) -> None:
    filler = "The layout is ready for review. " * (MAX_STANCE_CHARS // 32 + 10)
    decline = "I can't move to WhatsApp, let's keep it on Upwork."
    assert stance_of(rules, decline + " " + filler * 40) == DECLINE  # about 200 KB
    assert stance_of(rules, filler + decline) == NEUTRAL


def test_hostile_text_is_read_without_error(rules: RuleSet) -> None:
    controls = "".join(chr(c) for c in range(32)) + "\x7f\u202e\u200b\ufeff"
    text = f"{controls}I can't{controls} move to WhatsApp.{controls}\n" + "\x00" * 100_000
    assert stance_of(rules, text) == DECLINE
    deep_quote = "> " * 50_000 + "can we use WhatsApp?"
    assert stance_of(rules, f"Draft attached.\n{deep_quote}") == NEUTRAL
    one_line = "no " * 300_000
    assert stance_of(rules, one_line) in (DECLINE, AGREE, NEUTRAL)


def test_the_stance_set_is_compiled_once() -> None:
    assert stance_concepts() is stance_concepts()
    assert {"s_refuse", "s_keep", "s_consent", "messenger", "pay_instrument"} <= set(
        stance_concepts().names
    )


# --------------------------------------------------------------------------- rung wordings

DRAFTS = Path(__file__).parents[2] / "guard" / "reports" / "templates" / "drafts"
LANGUAGES = ("en", "es", "pt", "fr", "de", "ru")
RUNGS = ("decline", "firm", "reported")


def _render(name: str, client: str) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(DRAFTS)),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(name).render(client=client, platform="Upwork")


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("rung", RUNGS)
def test_each_rung_renders_with_and_without_a_client_name(rung: str, lang: str) -> None:
    named = _render(f"{rung}.{lang}.txt", "Ana")
    plain = _render(f"{rung}.{lang}.txt", "")
    first_named, first_plain = named.splitlines()[0], plain.splitlines()[0]
    assert "Ana" in first_named and "Ana" not in plain
    assert not first_plain.endswith((" ,", " :", " !")) and "  " not in first_plain
    for body in (named, plain):
        assert "Upwork" in body and "{" not in body and "}" not in body
        assert body.endswith("\n") and not body.endswith("\n\n")
        assert all(len(line) <= 90 for line in body.splitlines())


def test_the_firm_and_reported_rungs_say_what_they_must() -> None:
    firm = _render("firm.en.txt", "Ana")
    reported = _render("reported.en.txt", "Ana")
    assert "stay on Upwork" in firm and "before" in firm
    assert "reported it to Upwork" in reported and "only continue" in reported


def test_a_short_refusal_under_a_thanks_line_still_counts(rules: RuleSet) -> None:
    # The segmenter takes the short lines after "Thanks!" for a signature.
    text = "Hi Sam,\n\nThanks!\nI can't move to WhatsApp, sorry.\n\nNadia"
    assert stance_of(rules, text) == DECLINE


def test_the_signature_neither_declines_nor_agrees(rules: RuleSet) -> None:
    tagline = "Draft attached, see you Friday.\n\nBest,\nNadia\n"
    tagline += "Upwork Top Rated | payments via Upwork only"
    assert stance_of(rules, tagline) == NEUTRAL
    phone = "Draft attached, see you Friday.\n\n-- \nNadia Petrova\nWhatsApp: +44 7700 900123"
    assert stance_of(rules, phone) == NEUTRAL
