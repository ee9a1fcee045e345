"""The brand catalogue (guard/policy/brands.py, brands.toml): names, official domains,
look-alike and subdomain hosts, and the loader's errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from guard.policy import RulesError
from guard.policy.brands import BUILTIN_PATH, FAMILIES, Brand, Catalogue, load_brands

RULES = Path(__file__).resolve().parents[2] / "guard" / "policy" / "rules.toml"


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return load_brands()


def key(brand: Brand | None) -> str | None:
    return brand.key if brand is not None else None


# --- the data -------------------------------------------------------------------------------


def test_catalogue_size_and_families(cat):
    assert len(cat) >= 150
    assert {b.family for b in cat.brands} == FAMILIES
    assert load_brands() is load_brands()  # the built-in catalogue is built once


# The brands rules.toml held before the catalogue existed: key -> (a name, a domain,
# platform, generic). They moved here; what the structural checks did with them holds.
FORMER_RULES_BRANDS = {
    "upwork": ("upwork", "odesk.com", True, False),
    "fiverr": ("fiverr", "fiverr.net", True, False),
    "freelancer": ("freelancer.com", "freelancer.com", True, True),
    "peopleperhour": ("peopleperhour", "peopleperhour.com", True, False),
    "toptal": ("toptal", "toptal.com", True, False),
    "paypal": ("paypal", "paypal-communication.com", False, False),
    "payoneer": ("payoneer", "payoneer.com", False, False),
    "wise": ("transferwise", "transferwise.com", False, True),
    "stripe": ("stripe", "stripe.com", False, True),
    "github": ("github", "githubusercontent.com", False, False),
}


@pytest.mark.parametrize("brand_key", sorted(FORMER_RULES_BRANDS))
def test_every_former_rules_brand_is_kept_with_its_names_domains_and_flags(cat, brand_key):
    name, domain, platform, generic = FORMER_RULES_BRANDS[brand_key]
    brand = cat.by_key[brand_key]
    assert name in brand.names
    assert domain in brand.domains
    assert brand.platform == platform
    assert brand.generic == generic


def test_rules_file_no_longer_lists_brands():
    assert "brands" not in tomllib.loads(RULES.read_text(encoding="utf-8"))


def test_free_mail_domains_are_shared_never_official(cat):
    for host in ("gmail.com", "outlook.com", "hotmail.com", "icloud.com", "yahoo.com",
                 "laposte.net", "t-online.de", "x.onmicrosoft.com"):  # fmt: skip
        assert cat.brand_of_domain(host) is None, host
        assert cat.is_known(host), host


# --- named(): display names, per family -----------------------------------------------------

CLAIMS = [
    ("platform", "Upwork Support", "upwork"),
    ("payment", "PayPal Service", "paypal"),
    ("bank", "Wells Fargo Online", "wellsfargo"),
    ("bank", "Chase Bank", "chase"),
    ("mail_cloud", "Microsoft 365 Team", "microsoft"),
    ("mail_cloud", "Apple Support", "apple"),
    ("courier", "DHL Paket", "dhl"),
    ("courier", "Royal Mail", "royalmail"),
    ("courier", "UPS Package", "ups"),
    ("streaming", "Netflix.com", "netflix"),
    ("retail", "Amazon.com", "amazon"),
    ("government", "HM Revenue & Customs", "hmrc"),
    ("government", "Agenzia delle Entrate", "agenziaentrate"),
    ("esign", "DocuSign via files", "docusign"),
    ("social", "Instagram", "instagram"),
    ("crypto", "Trust Wallet", "trustwallet"),
    ("crypto", "Ledger Wallet™", "ledger"),
    ("telecom", "Orange Service Client", "orange"),
    ("other", "ADAC Kundenservice", "adac"),
]


@pytest.mark.parametrize(("family", "shown", "expected"), CLAIMS)
def test_display_name_claims_brand(cat, family, shown, expected):
    brand = cat.named(shown, display_name=True)
    assert key(brand) == expected
    assert brand is not None and brand.family == family


@pytest.mark.parametrize(
    "shown",
    [
        "Chase Miller",  # a person named like a generic brand
        "Sam Orange",
        "Apple Pie Bakery",
        "Target Audience Research",
        "Dana Whitfield",
        "Ledger Accounting Ltd Partners",
        "Ups and Downs Podcast",
        "Box Hill Studio",
    ],
)
def test_display_name_of_a_person_or_ordinary_words_claims_nothing(cat, shown):
    assert cat.named(shown, display_name=True) is None


@pytest.mark.parametrize(
    "shown",
    [
        "ᴘᴀʏᴘᴀʟ",  # small capitals
        "ＰａｙＰａｌ",  # fullwidth
        "Раураl",  # Cyrillic look-alikes
        "P a y P a l",  # spaced out
        "P.a.y.P.a.l Service",
        "Pay\u200bPal",  # zero-width space
        "P̲a̲y̲P̲a̲l̲",  # combining underline
        "PayPa1",  # digit for a letter
    ],
)
def test_disguised_display_names(cat, shown):
    assert key(cat.named(shown, display_name=True)) == "paypal"


def test_whole_words_only(cat):
    assert cat.named("Upworkers Guild", display_name=True) is None
    assert cat.named("nonetflixing", display_name=False) is None


def test_generic_names_never_count_in_text(cat):
    assert cat.named("Chase", display_name=True) is not None
    assert cat.named("I will chase the client about the invoice", display_name=False) is None
    assert cat.named("An apple a day; the outlook is good", display_name=False) is None
    assert key(cat.named("Your Chase and PayPal accounts", display_name=False)) == "paypal"


def test_spacing_is_undone_only_in_display_names(cat):
    assert cat.named("P a y P a l", display_name=False) is None


def test_text_is_read_at_its_head_only(cat):
    assert key(cat.named("Netflix " + "x" * 10, display_name=False)) == "netflix"
    assert cat.named("x " * 5000 + "Netflix", display_name=False) is None


def test_composed_accents_stay_letters(cat):
    # "über" must not read as Uber, while accented brand names still match.
    assert cat.named("Ich habe das über die Plattform bezahlt", display_name=False) is None
    assert key(cat.named("Banco Itaú", display_name=True)) == "itau"


# --- official() -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("brand", "host"),
    [
        ("paypal", "mail.paypal.de"),
        ("microsoft", "accountprotection.microsoft.com"),
        ("amazon", "amazon.com.be"),
        ("hmrc", "www.gov.uk"),
        ("google", "google.co.jp"),
        ("sparkasse", "sparkasse-koelnbonn.de"),
        ("dhl", "dhl.de"),
    ],
)
def test_official(cat, brand, host):
    assert cat.official(cat.by_key[brand], host)


@pytest.mark.parametrize(
    ("brand", "host"),
    [
        ("paypal", "paypal.com.evil.ru"),
        ("paypal", "paypal-secure.com"),
        ("microsoft", "outlook.com"),
        ("amazon", "bucket.s3.amazonaws.com"),
        ("google", "x.firebaseapp.com"),
        ("laposte", "laposte.net"),
    ],
)
def test_not_official(cat, brand, host):
    assert not cat.official(cat.by_key[brand], host)


# --- lookalike() ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("upw0rk-verify.com", "upwork"),
        ("xn--upwrk-lye.com", "upwork"),  # punycode of a Cyrillic о
        ("upwork-billing.net", "upwork"),
        ("paypa1-secure.com", "paypal"),
        ("secure.paypall.com", "paypal"),  # one letter added
        ("netflx-billing.com", "netflix"),  # an inner letter dropped
        ("paypai.com", "paypal"),  # one letter changed
        ("amaz0n-orders.com", "amazon"),
        ("microsoftonline-login.top", "microsoft"),
        ("netflix-account.info", "netflix"),
        ("dhl-paket.info", "dhl"),  # name equal to a token
        ("docusign-envelope.net", "docusign"),
        ("coinbase-wallet.io", "coinbase"),
        ("mydeutschebahn.de", "deutschebahn"),  # contained in a token
    ],
)
def test_lookalike_hosts(cat, host, expected):
    assert key(cat.lookalike(host)) == expected


# Hosts where lookalike() must find no brand.
NOT_LOOKALIKE = [
    "paypal.com",
    "mail.paypal.de",
    "www.upwork.com",
    "storage.googleapis.com",  # shared: anyone's, but not a look-alike of Google
    "outlook.com",
    "trust-helpdesk.com",  # a letter dropped from a six-letter name is a word (truist)
    "apple-pie-recipes.com",  # generic brands are never looked for
    "chase-the-dream.org",
    "canvasprints.com",  # "canva" is too short to be found inside a word
    "www.low-interest-rates.net",  # "interest" is pinterest less its first letter
    "www.swisscom.ch swiss",  # not a host name
    "whitfield-studio.example",
]


def test_lookalike_index_finds_every_brand(cat):
    # Each non-generic brand's name with a digit swapped in is found: the index covers all.
    for brand in cat.brands:
        if brand.generic:
            continue
        word = "".join(c for c in brand.names[0] if c.isascii() and c.isalnum())
        if len(word) < 6 or "o" not in word:
            continue
        host = word.replace("o", "0", 1) + "-login.com"
        assert key(cat.lookalike(host)) == brand.key, host


# --- subdomain_brand() ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("paypal.com.account-check.example.ru", "paypal"),
        ("login.microsoftonline.secure-id.top", "microsoft"),
        ("chase.com-secure.ru", "chase"),  # a generic brand's domain spelled out
        ("apple.com.verify-id.ru", "apple"),
        ("paypal-login.firebaseapp.com", "paypal"),  # on a shared host
        ("amazon.superkoran.info", "amazon"),
    ],
)
def test_subdomain_brand(cat, host, expected):
    assert key(cat.subdomain_brand(host)) == expected


@pytest.mark.parametrize(
    ("method", "host"),
    [
        *(("lookalike", host) for host in NOT_LOOKALIKE),
        ("subdomain_brand", "www.paypal.com"),
        ("subdomain_brand", "mail.google.com"),
        ("subdomain_brand", "apple.fruit-shop.com"),
        ("subdomain_brand", "www.citi.umich.edu"),
        ("subdomain_brand", "paypal.com"),
    ],
)
def test_no_brand_found(cat, method, host):
    """lookalike() or subdomain_brand() finds no brand in ``host``."""
    assert getattr(cat, method)(host) is None


# --- the loader -----------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "brands.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_a_small_file(tmp_path):
    path = write(
        tmp_path,
        '[brands.acme]\nnames = ["acme bank"]\ndomains = ["acme.example"]\nfamily = "bank"\n',
    )
    cat = load_brands(path)
    assert len(cat) == 1
    assert key(cat.named("ACME Bank", display_name=True)) == "acme"
    assert cat.official(cat.by_key["acme"], "mail.acme.example")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[brands.x\n", "brands file"),
        ('[brands.x]\nnames = "x"\ndomains = ["x.com"]\n', "brands.x: 'names' must be a list"),
        ('[brands.x]\nnames = ["xbrand"]\n', "brands.x: 'domains' must list at least one"),
        ('[brands.x]\ndomains = ["not a domain"]\n', "'not a domain' is not a domain name"),
        ('[brands.x]\ndomains = ["x.com"]\nfamily = "bakery"\n', "unknown family 'bakery'"),
        ('[brands.x]\ndomains = ["x.com"]\ngeneric = "yes"\n', "'generic' must be true or false"),
        ('[brands.x]\ndomains = ["x.com"]\ncolour = "red"\n', "unknown field 'colour'"),
        ('[brand.x]\ndomains = ["x.com"]\n', "unknown section 'brand'"),
        (
            '[brands.x]\nnames = ["acme"]\ndomains = ["x.com"]\n'
            '[brands.y]\nnames = ["acme"]\ndomains = ["y.com"]\n',
            "name 'acme' is also a name of brands.x",
        ),
    ],
)
def test_broken_file_gives_one_clear_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as err:
        load_brands(path)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(RulesError, match=r"brands file .*missing\.toml"):
        load_brands(tmp_path / "missing.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[brands.x]\nnames = ["caf\xe9"]\ndomains = ["x.com"]\n')
    with pytest.raises(RulesError, match="not UTF-8"):
        load_brands(path)


def test_builtin_file_is_the_packaged_one():
    assert BUILTIN_PATH.name == "brands.toml" and BUILTIN_PATH.is_file()


def test_every_official_domain_is_its_brands_and_never_suspect(cat):
    for brand in cat.brands:
        for domain in brand.domains:
            for host in (domain, f"mail.{domain}"):
                owner = cat.brand_of_domain(host)
                assert owner is not None and domain in owner.domains, host
                assert cat.official(brand, host), (brand.key, host)
                assert cat.lookalike(host) is None, host
                assert cat.subdomain_brand(host) is None, host


def test_every_name_is_found_as_a_whole_display_name(cat):
    for brand in cat.brands:
        for name in brand.names:
            assert key(cat.named(name.title(), display_name=True)) == brand.key, name
