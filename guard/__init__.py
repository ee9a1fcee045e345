"""inbox-guard: guards a freelancer's work mailbox against off-platform requests and scams."""

__version__ = "0.1.0"
