"""Mail as data: what one message says, read from its bytes.

Owns the message model (``Message``, ``Address``, links, attachments), parsing raw bytes
into it with mail-parser and the standard library (header decoding, the MIME walk,
HTML-to-text with hidden-text detection, attachment sniffing), Message-ID handling and
reading .eml/mbox files from disk. Everything here works on bytes already in memory.

Must not import any other part of ``guard`` except ``guard.errors``: no policy, no
mailbox, no store, no configuration. (Checked by ``tests/unit/test_layers.py``.)
"""
