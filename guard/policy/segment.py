"""Splitting a message body into what its author wrote now and what it carries along.

A reply usually holds three kinds of text: the author's new words, the quoted history
(``>`` lines, an "On … wrote:" attribution and everything under it, Outlook's
"Original Message" and ``From:/Sent:`` header blocks, forwarded messages) and a signature
(after the ``-- `` delimiter, or the short block under a closing such as "Best regards,").
A risky request that is only quoted in the freelancer's polite decline is context, not a new
request, and a company signature that lists a phone line is not an invitation to call: the
engine judges the new text at full weight and the rest at a reduced one.

Pure functions on text; linear in its length (each line is looked at a bounded number of
times, every pattern is anchored to one line or two joined lines of bounded length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Lines longer than this are never taken for an attribution or a closing (bounded work).
_MAX_MARK_LINE = 300

# "On Mon, 3 Feb 2025 at 10:02, Rosa <r@x> wrote:" in the languages the guard reads.
_WROTE = (
    r"wrote|writes|escribió|escribio|escreveu|a écrit|a ecrit|schrieb|ha scritto|scrisse|"
    r"schreef|написал|написала|написал\(а\)|написав|написала\(в\)|napisał|napisała|"
    r"napisal|yazdı|yazdi|menulis|लिखा|写道|寫道|كتب"
)
_ATTRIBUTION = re.compile(rf"^\s*\S.{{0,260}}(?:{_WROTE})\s*[:：]\s*$", re.IGNORECASE)
# Outlook/Apple/Gmail separators after which everything is history.
_SEPARATOR = re.compile(
    r"^\s*(?:-{2,}|_{5,}|={5,})?\s*(?:original message|mensaje original|mensagem original|"
    r"message d'origine|ursprüngliche nachricht|messaggio originale|oorspronkelijk bericht|"
    r"исходное сообщение|oryginalna wiadomość|orijinal mesaj|pesan asli|原始邮件|"
    r"forwarded message|begin forwarded message|mensaje reenviado|mensagem encaminhada|"
    r"message transféré|weitergeleitete nachricht|messaggio inoltrato|doorgestuurd bericht|"
    r"пересылаемое сообщение|пересланное сообщение|przekazana wiadomość|"
    r"iletilen mesaj|pesan yang diteruskan|转发的邮件)\s*:?\s*(?:-{2,})?\s*$",
    re.IGNORECASE,
)
_UNDERSCORE_RULE = re.compile(r"^\s*_{10,}\s*$")
# A header block: "From: …" followed closely by "Sent:"/"Date:"/"To:"/"Subject:".
_HEADER_FROM = re.compile(
    r"^\s*\*?(?:from|de|von|da|van|от|od|kimden|dari|发件人)\s*\*?\s*[:：]\s*\S", re.I
)
_HEADER_NEXT = re.compile(
    r"^\s*\*?(?:sent|date|to|subject|cc|enviado|fecha|para|asunto|envoyé|date|à|objet|"
    r"gesendet|datum|an|betreff|inviato|data|a|oggetto|verzonden|aan|onderwerp|"
    r"отправлено|дата|кому|тема|wysłano|do|temat|gönderildi|tarih|kime|konu|"
    r"dikirim|tanggal|kepada|perihal|发送时间|收件人|主题)\s*\*?\s*[:：]",
    re.I,
)
_SIG_DELIMITER = re.compile(r"^--\s?$")
_SENT_FROM = re.compile(
    r"^\s*(?:sent from my|get outlook for|enviado desde mi|enviado do meu|envoyé de mon|"
    r"von meinem .{1,30} gesendet|inviato da|отправлено с)",
    re.I,
)
_SENT_FIRST = frozenset("SsGgEeVvIiОо")
# A closing line on its own: what follows it (a few short lines) is the signature.
_CLOSING = re.compile(
    r"^\s*(?:best|best regards|kind regards|warm regards|regards|many thanks|thanks|thank you|"
    r"cheers|sincerely|yours|all the best|best wishes|with best wishes|talk soon|"
    r"saludos|un saludo|atentamente|abrazos|atenciosamente|abraços|obrigad[oa]|"
    r"cordialement|bien à vous|bien cordialement|merci|"
    r"mit freundlichen grüßen|viele grüße|beste grüße|lg|grüße|"
    r"cordiali saluti|saluti|grazie|с уважением|спасибо|всего доброго|з повагою|"
    r"pozdrawiam|z poważaniem|saygılarımla|teşekkürler|salam|terima kasih|hormat saya|"
    r"dhanyavaad|shukriya|此致|谢谢|مع التحية|شكرا)\s*[,.!]?\s*$",
    re.IGNORECASE,
)
_POSTSCRIPT = re.compile(r"^p\.?\s?s\b", re.IGNORECASE)  # a P.S. is the author's words
_MAX_SIGNATURE_LINES = 10
_MAX_SIGNATURE_LINE = 90


@dataclass(frozen=True, slots=True)
class Segments:
    """The parts of one body; each is the original text of its lines, joined by newlines."""

    new: str
    quoted: str = ""
    signature: str = ""


def _history_starts(lines: list[str], i: int) -> bool:
    """True when line ``i`` starts quoted history that runs to the end of the body."""
    line = lines[i]
    stripped = line.strip()
    if not stripped or len(line) > _MAX_MARK_LINE:
        return False
    # Cheap tests first: every marker ends in a colon or holds a run of -, _ or =.
    colon = stripped[-1] in ":："
    if (colon or "--" in stripped or "__" in stripped or "==" in stripped) and (
        _SEPARATOR.match(line) or _UNDERSCORE_RULE.match(line)
    ):
        return True
    if colon and _ATTRIBUTION.match(line):
        return True
    # An attribution wrapped over two lines ("On Mon, … Rosa" / "<rosa@x> wrote:").
    if i + 1 < len(lines) and len(lines[i + 1]) <= _MAX_MARK_LINE:
        nxt = lines[i + 1].strip()
        if (
            nxt[-1:] in (":", "：")
            and _ATTRIBUTION.match(f"{stripped} {nxt}")
            and (nxt[:1] == "<" or not _ATTRIBUTION.match(nxt))
        ):
            return True
    if ":" in stripped[:16] and _HEADER_FROM.match(line):
        following = [ln for ln in lines[i + 1 : i + 5] if ln.strip()]
        if sum(1 for ln in following if _HEADER_NEXT.match(ln)) >= 2:
            return True
    return False


def split(body: str) -> Segments:
    """Split ``body`` into new text, quoted history and signature.

    Lines starting with ``>`` are quoted wherever they are (inline replies keep the
    author's interleaved answers as new text); an attribution line, an "Original
    Message"/"Forwarded message" separator or a ``From:``/``Sent:`` header block starts
    history that runs to the end. The signature is what follows ``-- `` or a closing line
    ("Best regards,") when only a few short lines follow it.
    """
    if not body:
        return Segments("")
    lines = body.splitlines()
    history_at = len(lines)
    # Cheap per-line tests first (most lines are ordinary text): only a line that ends in
    # a colon, is followed by one that does, holds a run of -, _ or =, or starts like a
    # header can start the history.
    colon = [line.rstrip()[-1:] in (":", "：") for line in lines]
    colon.append(False)
    for i, line in enumerate(lines):
        first = line[:1]
        if first == ">" or (first in (" ", "\t") and line.lstrip()[:1] == ">"):
            continue
        if not (
            colon[i]
            or colon[i + 1]
            or "--" in line
            or "__" in line
            or "==" in line
            or ":" in line[:16]
        ):
            continue
        if _history_starts(lines, i):
            history_at = i
            break
    own: list[str] = []
    quoted: list[str] = []
    if ">" not in body:
        own = lines[:history_at]  # no quote marks: one slice instead of a loop
    else:
        for line in lines[:history_at]:
            first = line[:1]
            if first == ">" or (first in (" ", "\t") and line.lstrip()[:1] == ">"):
                quoted.append(line)
            else:
                own.append(line)
    quoted.extend(lines[history_at:])
    signature: list[str] = []
    cut = _signature_start(own)
    if cut is not None:
        signature = own[cut:]
        own = own[:cut]
    return Segments(
        new="\n".join(own).strip("\n"),
        quoted="\n".join(quoted).strip("\n"),
        signature="\n".join(signature).strip("\n"),
    )


def _signature_start(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        if line[:2] == "--" and _SIG_DELIMITER.match(line):
            return i
        if len(line) < 80 and line.lstrip()[:1] in _SENT_FIRST and _SENT_FROM.match(line):
            return i
    # A closing near the end followed by a short block of short lines.
    last = len(lines)
    while last and not lines[last - 1].strip():
        last -= 1
    start = max(0, last - _MAX_SIGNATURE_LINES - 1)
    for i in range(start, last):
        line = lines[i]
        if len(line) > 40 or not _CLOSING.match(line):
            continue
        after = [ln.strip() for ln in lines[i + 1 : last] if ln.strip()]
        if len(after) <= _MAX_SIGNATURE_LINES and all(
            len(ln) <= _MAX_SIGNATURE_LINE and not _POSTSCRIPT.match(ln) for ln in after
        ):
            return i + 1
    return None
