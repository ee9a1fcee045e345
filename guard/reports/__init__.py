"""What the guard writes for people: the daily digest, evidence exports, reply drafts.

Owns selection and rendering of findings (Jinja2 templates in ``templates/``), cleaning
untrusted mail text before it is shown, the digest's SMTP delivery and the evidence
bundle (writing and verifying it).

May import ``guard.errors``, ``guard.config``, ``guard.mail``, ``guard.policy``,
``guard.store`` and ``guard.mailbox``; never ``guard.service`` or ``guard.cli``.
"""
