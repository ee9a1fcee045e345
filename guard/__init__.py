"""inbox-guard: guards a freelancer's work mailbox against off-platform requests, scams and phishing."""

__version__ = "0.1.0"
