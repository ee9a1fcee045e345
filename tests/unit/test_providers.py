"""The provider presets of `inbox-guard setup` (guard/config/providers.py): each preset
yields the servers its provider documents, and is recognised only from the address's
domain (custom domains are never guessed)."""

from __future__ import annotations

import pytest

from guard.config import ImapSettings, SmtpSettings
from guard.config.providers import (
    CHOSEN_BY_USER,
    PROVIDERS,
    default_port,
    provider_for_address,
    provider_keys,
    provider_named,
)

# key, an address of it (None: chosen by the user), IMAP (host, port, tls),
# SMTP (host, port, tls), how one logs in
EXPECTED = {
    "gmail": (
        "me@gmail.com",
        ("imap.gmail.com", 993, "implicit"),
        ("smtp.gmail.com", 587, "starttls"),
        "app-password",
    ),
    "google-workspace": (
        None,
        ("imap.gmail.com", 993, "implicit"),
        ("smtp.gmail.com", 587, "starttls"),
        "app-password",
    ),
    "outlook": (
        "me@hotmail.com",
        ("outlook.office365.com", 993, "implicit"),
        ("smtp-mail.outlook.com", 587, "starttls"),
        "oauth2",
    ),
    "microsoft365": (
        None,
        ("outlook.office365.com", 993, "implicit"),
        ("smtp.office365.com", 587, "starttls"),
        "oauth2",
    ),
    "fastmail": (
        "me@fastmail.com",
        ("imap.fastmail.com", 993, "implicit"),
        ("smtp.fastmail.com", 465, "implicit"),
        "app-password",
    ),
    "icloud": (
        "me@icloud.com",
        ("imap.mail.me.com", 993, "implicit"),
        ("smtp.mail.me.com", 587, "starttls"),
        "app-password",
    ),
    "yahoo": (
        "me@yahoo.com",
        ("imap.mail.yahoo.com", 993, "implicit"),
        ("smtp.mail.yahoo.com", 465, "implicit"),
        "app-password",
    ),
    "zoho": (
        "me@zohomail.com",
        ("imap.zoho.com", 993, "implicit"),
        ("smtp.zoho.com", 465, "implicit"),
        "password",
    ),
    "zoho-eu": (
        "me@zoho.eu",
        ("imap.zoho.eu", 993, "implicit"),
        ("smtp.zoho.eu", 465, "implicit"),
        "password",
    ),
    "zoho-org": (
        None,
        ("imappro.zoho.com", 993, "implicit"),
        ("smtppro.zoho.com", 465, "implicit"),
        "password",
    ),
    "proton-bridge": (
        "me@proton.me",
        ("127.0.0.1", 1143, "starttls"),
        ("127.0.0.1", 1025, "starttls"),
        "bridge",
    ),
    "gmx": (
        "me@gmx.de",
        ("imap.gmx.net", 993, "implicit"),
        ("mail.gmx.net", 587, "starttls"),
        "password",
    ),
    "gmx-com": (
        "me@gmx.com",
        ("imap.gmx.com", 993, "implicit"),
        ("mail.gmx.com", 587, "starttls"),
        "password",
    ),
    "webde": (
        "me@web.de",
        ("imap.web.de", 993, "implicit"),
        ("smtp.web.de", 587, "starttls"),
        "password",
    ),
}


def test_every_preset_is_tested_once() -> None:
    assert set(EXPECTED) | {"generic"} == set(provider_keys())
    assert len(provider_keys()) == len(PROVIDERS)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_preset_yields_its_providers_servers(key: str) -> None:
    address, imap, smtp, auth = EXPECTED[key]
    preset = provider_named(key)
    login = address or "me@company.example"
    settings = preset.settings(login)
    assert (settings["imap"]["host"], settings["imap"]["port"], settings["imap"]["tls"]) == imap
    assert (settings["smtp"]["host"], settings["smtp"]["port"], settings["smtp"]["tls"]) == smtp
    assert settings["imap"]["username"] == login == settings["smtp"]["username"]
    assert settings["labels_mode"] == "auto"  # what the server offers decides
    assert preset.auth == auth
    if address is None:
        assert key in CHOSEN_BY_USER and provider_for_address(login) is None
    else:
        assert provider_for_address(address) is preset
        assert provider_for_address(address.upper() + ".") is preset  # case, trailing dot
    # what the preset yields is a valid configuration section (loopback may go without TLS)
    ImapSettings.model_validate({**settings["imap"], "password_file": "/x"})
    SmtpSettings.model_validate({**settings["smtp"], "password_file": "/x"})
    assert preset.advice, "every preset says what to do at the provider"
    if auth == "oauth2":
        assert preset.oauth2_command(login) == f"oama access {login}"
    if auth in ("app-password", "bridge"):
        assert preset.secret_page


def test_generic_preset_asks_for_the_server() -> None:
    preset = provider_named("generic")
    assert preset.is_generic and not preset.domains
    assert preset.settings("me@own.example")["imap"]["host"] is None
    assert provider_for_address("me@own.example") is None  # no network guess (MX, autoconfig)


def test_gmail_labels_and_the_imap_switch() -> None:
    gmail = provider_named("gmail")
    assert "Gmail labels" in gmail.labels
    assert any("IMAP is always on" in line for line in gmail.advice)
    assert "myaccount.google.com/apppasswords" in gmail.secret_page
    assert any("IMAP must be enabled" in line for line in provider_named("zoho").advice)
    assert any("POP3 und IMAP Zugriff erlauben" in line for line in provider_named("gmx").advice)


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(KeyError) as info:
        provider_named("hotmale")
    assert "unknown provider 'hotmale'" in info.value.args[0] and "gmail" in info.value.args[0]
    assert provider_named(" Gmail ").key == "gmail"


def test_default_ports_follow_the_tls_mode() -> None:
    assert default_port("imap", "implicit") == 993 and default_port("imap", "starttls") == 143
    assert default_port("smtp", "starttls") == 587 and default_port("smtp", "implicit") == 465
    # the same defaults as the configuration models
    assert ImapSettings.model_validate({"host": "h", "username": "u"}).port == 993
    assert SmtpSettings.model_validate({"host": "h"}).port == 587
