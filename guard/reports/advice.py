"""What the digest advises for each category of finding, and the replies it suggests.

Fixed text, written for a freelancer on a platform; never built from mail content.
"""

from __future__ import annotations

__all__ = ["ADVICE", "NOT_LEGAL_ADVICE", "SUGGESTED_REPLIES"]

ADVICE: dict[str, tuple[str, ...]] = {
    "off_platform_payment": (
        "Decline politely and keep the contract and every payment on the platform: escrow "
        "only protects payments made through it, and paying outside breaks its terms of "
        "service (accounts get suspended for it).",
        "Do not send PayPal, bank or card details: the platform pays you.",
        "If the client insists, report them to the platform.",
    ),
    "off_platform_contact": (
        "Keep the conversation on the platform: its messages are your record if anything "
        "goes wrong, and moving to WhatsApp, Telegram or Skype before a contract is the usual "
        "first step of scams and off-platform deals.",
        "Do not give out your phone number or personal address; decline politely.",
        "If the client insists, report them to the platform.",
    ),
    "contact_request": (
        "Do not send your personal e-mail, phone number or home address: the work can be "
        "done through the platform.",
        "Never send ID scans, bank logins or verification codes; no genuine client needs them.",
    ),
    "personal_data": (
        "Never send ID or passport scans, bank or platform logins, or one-time codes, "
        "whatever reason is given.",
        "If you already did: change the password, call your bank, and report the message "
        "to the platform.",
    ),
    "scam": (
        "Never pay for equipment, software, training or a 'starter kit' to get work.",
        "A cheque or transfer that overpays you, with a request to send the difference back, "
        "is fake: it bounces after you have sent your own money.",
        "Stop replying and report the sender to the platform.",
    ),
    "phishing": (
        "Do not click links or open attachments in this message.",
        "To check your account, type the platform's address yourself or use its app; never "
        "log in from a link in an e-mail.",
        "Report the message to the platform (and as phishing in your mail client). If you "
        "already entered a password, change it now and turn on two-factor authentication.",
    ),
    "dispute": (
        "Keep every message unaltered, with its date: delete or edit nothing, and export "
        "the conversation if the platform allows it.",
        "Answer factually and calmly; stick to what the contract says.",
        "Use the platform's dispute or resolution process rather than settling outside it.",
    ),
}

SUGGESTED_REPLIES: dict[str, str] = {
    "off_platform_payment": (
        "Hello, thank you for the offer. I keep all contracts and payments on the platform: "
        "its escrow protects both of us, and paying outside it would break its terms for "
        "both of us. I'm happy to go ahead here; please send the offer through the platform "
        "and I'll get started. Best regards"
    ),
    "off_platform_contact": (
        "Hello, thank you for reaching out. I prefer to keep our conversation on the "
        "platform: it keeps a clear record for both of us, and its terms ask for it. I'm "
        "happy to discuss every detail here. Best regards"
    ),
}

NOT_LEGAL_ADVICE = "Practical advice, not legal advice."
