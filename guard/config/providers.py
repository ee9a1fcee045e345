"""Mail provider presets for ``inbox-guard setup``, as data: one table, one row per provider.

A preset says how a provider is reached (IMAP and SMTP host, port, TLS mode), how its users
log in (an app password, the account password, an OAuth2 token, a bridge password), which
label backend to expect, and the few things a user must do at the provider first (create an
app password, switch IMAP on). A preset is recognised only from the domain of the address
the user typed: nothing is looked up on the network (no MX or autoconfig query), so a
custom domain hosted by Google Workspace, Microsoft 365 or Zoho is chosen by the user.

The facts were checked against the providers' help pages (December 2026); pages move, so
the advice names the menu path as well as the address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Auth = Literal["app-password", "password", "oauth2", "bridge"]
Tls = Literal["implicit", "starttls", "none"]

_DEFAULT_PORTS: dict[str, dict[str, int]] = {
    "imap": {"implicit": 993, "starttls": 143, "none": 143},
    "smtp": {"starttls": 587, "implicit": 465, "none": 25},
}


@dataclass(frozen=True)
class Provider:
    """One mail provider: where its servers are and what a user must know to log in."""

    key: str
    """The name for ``setup --provider``."""
    name: str
    domains: tuple[str, ...]
    """Address domains that select this preset; empty: only chosen by name."""
    imap_host: str | None
    """None: the user gives it (generic IMAP)."""
    imap_port: int = 993
    imap_tls: Tls = "implicit"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_tls: Tls = "starttls"
    auth: Auth = "app-password"
    labels: str = "decided from the server's capabilities at the live check"
    """The label backend to expect, in words; ``labels.mode`` stays "auto" and the live
    check reports what the server really offers."""
    secret_page: str = ""
    """Where the app password (or the bridge password) is made, as text for the user."""
    advice: tuple[str, ...] = ()
    oauth2_example: str = ""
    """An example ``oauth2_token_command``; ``{address}`` is replaced by the address."""
    username_is_address: bool = True

    @property
    def is_generic(self) -> bool:
        return self.imap_host is None

    def settings(self, address: str) -> dict[str, Any]:
        """The ``[imap]`` and ``[smtp]`` keys this preset yields for ``address`` (ports
        always spelled out), plus ``labels_mode``; no secret keys."""
        imap: dict[str, Any] = {
            "host": self.imap_host,
            "port": self.imap_port,
            "tls": self.imap_tls,
            "username": address if self.username_is_address else None,
        }
        smtp: dict[str, Any] = {
            "host": self.smtp_host,
            "port": self.smtp_port,
            "tls": self.smtp_tls,
            "username": address if self.username_is_address else None,
        }
        return {"imap": imap, "smtp": smtp, "labels_mode": "auto"}

    def oauth2_command(self, address: str) -> str:
        return self.oauth2_example.replace("{address}", address)


def default_port(protocol: str, tls: str) -> int:
    """The port inbox-guard assumes for ``protocol`` ("imap"/"smtp") with ``tls``."""
    return _DEFAULT_PORTS[protocol][tls]


_GOOGLE_APP_PASSWORD = "https://myaccount.google.com/apppasswords"
_MICROSOFT_OAUTH = (
    "Microsoft accepts no password over IMAP: use an OAuth2 helper that keeps your refresh "
    "token and prints a fresh access token (for example oama, or mutt_oauth2.py)."
)

PROVIDERS: tuple[Provider, ...] = (
    Provider(
        key="gmail",
        name="Gmail",
        domains=("gmail.com", "googlemail.com"),
        imap_host="imap.gmail.com",
        smtp_host="smtp.gmail.com",
        labels="Gmail labels (the server speaks X-GM-EXT-1)",
        secret_page=_GOOGLE_APP_PASSWORD
        + " (Google Account > Security > 2-Step Verification > App passwords)",
        advice=(
            "An app password needs 2-Step Verification switched on first.",
            "IMAP is always on for Gmail accounts; nothing to enable.",
            "Or log in with OAuth2: an oauth2_token_command (e.g. oama) instead of a password.",
        ),
        oauth2_example="oama access {address}",
    ),
    Provider(
        key="google-workspace",
        name="Google Workspace",
        domains=(),
        imap_host="imap.gmail.com",
        smtp_host="smtp.gmail.com",
        labels="Gmail labels (the server speaks X-GM-EXT-1)",
        secret_page=_GOOGLE_APP_PASSWORD,
        advice=(
            "Your administrator must allow IMAP access (Admin console > Apps > Google "
            "Workspace > Gmail > End User Access).",
            "App passwords need 2-Step Verification, and an administrator may forbid them: "
            "then use OAuth2 (oauth2_token_command, e.g. oama).",
        ),
        oauth2_example="oama access {address}",
    ),
    Provider(
        key="outlook",
        name="Outlook.com / Hotmail",
        domains=(
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "hotmail.co.uk",
            "hotmail.fr",
            "hotmail.de",
            "hotmail.it",
            "hotmail.es",
            "outlook.fr",
            "outlook.de",
            "outlook.es",
            "outlook.it",
            "live.co.uk",
            "live.fr",
            "live.de",
        ),
        imap_host="outlook.office365.com",
        smtp_host="smtp-mail.outlook.com",
        auth="oauth2",
        labels="probably label folders (Exchange keeps no custom keywords)",
        advice=(
            _MICROSOFT_OAUTH,
            "Since September 2024 Outlook.com refuses passwords and app passwords over IMAP "
            "and SMTP.",
        ),
        oauth2_example="oama access {address}",
    ),
    Provider(
        key="microsoft365",
        name="Microsoft 365 (work or school)",
        domains=(),
        imap_host="outlook.office365.com",
        smtp_host="smtp.office365.com",
        auth="oauth2",
        labels="probably label folders (Exchange keeps no custom keywords)",
        advice=(
            _MICROSOFT_OAUTH,
            "The OAuth2 app needs the IMAP.AccessAsUser.All permission (and SMTP.Send for the "
            "digest); your administrator may have to consent to it.",
            "IMAP (and SMTP AUTH, for the digest) must be enabled for the mailbox in the "
            "Exchange admin center.",
        ),
        oauth2_example="oama access {address}",
    ),
    Provider(
        key="fastmail",
        name="Fastmail",
        domains=("fastmail.com", "fastmail.fm"),
        imap_host="imap.fastmail.com",
        smtp_host="smtp.fastmail.com",
        smtp_port=465,
        smtp_tls="implicit",
        labels="IMAP keywords plus label folders",
        secret_page="Fastmail web > Settings > Privacy & Security > Integrations > "
        "New app password",
        advice=(
            "IMAP needs an app password; your normal password does not work there.",
            "The Basic plan has no IMAP access.",
        ),
    ),
    Provider(
        key="icloud",
        name="iCloud Mail",
        domains=("icloud.com", "me.com", "mac.com"),
        imap_host="imap.mail.me.com",
        smtp_host="smtp.mail.me.com",
        secret_page="https://account.apple.com > Sign-In and Security > App-Specific Passwords",
        advice=(
            "An app-specific password needs two-factor authentication on your Apple Account.",
            "If the login with the full address is refused, try the name part alone "
            "(before the @) as the IMAP username.",
        ),
    ),
    Provider(
        key="yahoo",
        name="Yahoo Mail",
        domains=(
            "yahoo.com",
            "ymail.com",
            "rocketmail.com",
            "yahoo.co.uk",
            "yahoo.fr",
            "yahoo.de",
            "yahoo.es",
            "yahoo.it",
            "yahoo.ca",
            "yahoo.com.au",
            "yahoo.co.in",
        ),
        imap_host="imap.mail.yahoo.com",
        smtp_host="smtp.mail.yahoo.com",
        smtp_port=465,
        smtp_tls="implicit",
        secret_page="https://login.yahoo.com/account/security > Generate app password",
        advice=("Your account password is refused over IMAP: create an app password.",),
    ),
    Provider(
        key="zoho",
        name="Zoho Mail (personal, zoho.com data centre)",
        domains=("zoho.com", "zohomail.com"),
        imap_host="imap.zoho.com",
        smtp_host="smtp.zoho.com",
        smtp_port=465,
        smtp_tls="implicit",
        auth="password",
        secret_page="https://accounts.zoho.com > Security > App Passwords",
        advice=(
            "IMAP must be enabled: Zoho Mail > Settings > Mail Accounts > IMAP > IMAP Access.",
            "With two-factor authentication on, use an app password.",
        ),
    ),
    Provider(
        key="zoho-eu",
        name="Zoho Mail (personal, EU data centre)",
        domains=("zoho.eu", "zohomail.eu"),
        imap_host="imap.zoho.eu",
        smtp_host="smtp.zoho.eu",
        smtp_port=465,
        smtp_tls="implicit",
        auth="password",
        secret_page="https://accounts.zoho.eu > Security > App Passwords",
        advice=(
            "IMAP must be enabled: Zoho Mail > Settings > Mail Accounts > IMAP > IMAP Access.",
            "With two-factor authentication on, use an app password.",
        ),
    ),
    Provider(
        key="zoho-org",
        name="Zoho Mail (your own domain)",
        domains=(),
        imap_host="imappro.zoho.com",
        smtp_host="smtppro.zoho.com",
        smtp_port=465,
        smtp_tls="implicit",
        auth="password",
        secret_page="https://accounts.zoho.com > Security > App Passwords",
        advice=(
            "IMAP must be enabled: Zoho Mail > Settings > Mail Accounts > IMAP > IMAP Access "
            "(your administrator may have to allow it).",
            "For another data centre replace .com by its ending (.eu, .in, .com.au).",
            "With two-factor authentication on, use an app password.",
        ),
    ),
    Provider(
        key="proton-bridge",
        name="Proton Mail (through Proton Mail Bridge)",
        domains=("proton.me", "protonmail.com", "protonmail.ch", "pm.me"),
        imap_host="127.0.0.1",
        imap_port=1143,
        imap_tls="starttls",
        smtp_host="127.0.0.1",
        smtp_port=1025,
        smtp_tls="starttls",
        auth="bridge",
        labels="probably label folders (Bridge shows Proton labels as folders)",
        secret_page="the Bridge app: your account > Mailbox details (the password Bridge "
        "generated, not your Proton password)",
        advice=(
            "Proton Mail has no IMAP of its own: Proton Mail Bridge (paid plans) must run on "
            "this machine.",
            "Bridge's certificate is its own: export it (Bridge > Settings > Export TLS "
            "certificates) and give the file as the CA file.",
        ),
    ),
    Provider(
        key="gmx",
        name="GMX (gmx.net, gmx.de)",
        domains=("gmx.net", "gmx.de", "gmx.at", "gmx.ch"),
        imap_host="imap.gmx.net",
        smtp_host="mail.gmx.net",
        auth="password",
        secret_page="",
        advice=(
            "IMAP must be enabled: E-Mail > Einstellungen > POP3 & IMAP > "
            "POP3 und IMAP Zugriff erlauben.",
            "With two-factor authentication on, create an application password in the "
            "account's security settings.",
        ),
    ),
    Provider(
        key="gmx-com",
        name="GMX (gmx.com)",
        domains=("gmx.com", "gmx.us", "gmx.co.uk", "gmx.fr", "gmx.es"),
        imap_host="imap.gmx.com",
        smtp_host="mail.gmx.com",
        auth="password",
        advice=(
            "IMAP must be enabled: E-mail > Settings > POP3 & IMAP > Allow access via "
            "POP3 and IMAP.",
            "With two-factor authentication on, create an application password.",
        ),
    ),
    Provider(
        key="webde",
        name="WEB.DE",
        domains=("web.de",),
        imap_host="imap.web.de",
        smtp_host="smtp.web.de",
        auth="password",
        advice=(
            "IMAP must be enabled: E-Mail > Einstellungen > POP3/IMAP Abruf > "
            "POP3 und IMAP Zugriff erlauben.",
            "With two-factor authentication on, create an application password.",
        ),
    ),
    Provider(
        key="generic",
        name="Other IMAP server",
        domains=(),
        imap_host=None,
        smtp_host=None,
        auth="password",
        advice=(
            "Your provider's help pages name the IMAP server, its port and TLS mode: "
            "993 is TLS from the start, 143 STARTTLS.",
            "If the provider offers app passwords, use one.",
        ),
    ),
)

_BY_KEY = {p.key: p for p in PROVIDERS}
_BY_DOMAIN = {d: p for p in PROVIDERS for d in p.domains}
CHOSEN_BY_USER = tuple(p.key for p in PROVIDERS if not p.domains)
"""Presets never recognised from an address (custom domains): the user picks them."""


def provider_named(key: str) -> Provider:
    """The preset ``key``; ``KeyError`` names the known keys."""
    try:
        return _BY_KEY[key.strip().lower()]
    except KeyError:
        raise KeyError(f"unknown provider {key!r} (one of {', '.join(_BY_KEY)})") from None


def provider_for_address(address: str) -> Provider | None:
    """The preset recognised from the address's domain, or None (a custom domain: the user
    chooses Google Workspace, Microsoft 365, Zoho or a generic server)."""
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    return _BY_DOMAIN.get(domain)


def provider_keys() -> tuple[str, ...]:
    return tuple(_BY_KEY)
