"""guard.mail.sources: files, directories, Maildirs and mboxes to (name, raw bytes)."""

from __future__ import annotations

import io
import mailbox
import os
import sys
from pathlib import Path

import pytest

from guard.mail.sources import Source, SourceError, iter_sources

MSG = b"From: a@example.com\nTo: b@example.org\nSubject: %s\n\nHello %s.\n"


def message(tag: str) -> bytes:
    return MSG % (tag.encode(), tag.encode())


def names(sources: list[Source], root: Path) -> list[str]:
    return [os.path.relpath(s.name, root) for s in sources]


def test_eml_file_is_one_message_with_unchanged_bytes(tmp_path: Path) -> None:
    raw = message("one").replace(b"\n", b"\r\n")
    path = tmp_path / "one.eml"
    path.write_bytes(raw)
    assert list(iter_sources([path])) == [Source(str(path), raw)]


def test_any_regular_file_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "message.txt"
    path.write_bytes(message("x"))
    assert [s.name for s in iter_sources([str(path)])] == [str(path)]


def test_nested_directory_sorted_and_only_eml(tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "deeper" / "3.eml").write_bytes(message("3"))
    (tmp_path / "b" / "2.EML").write_bytes(message("2"))
    (tmp_path / "a" / "1.eml").write_bytes(message("1"))
    (tmp_path / "0.eml").write_bytes(message("0"))
    (tmp_path / "notes.txt").write_text("not a message")
    (tmp_path / "a" / ".hidden.eml").write_bytes(message("hidden"))
    found = list(iter_sources([tmp_path]))
    assert names(found, tmp_path) == [
        "0.eml",
        os.path.join("a", "1.eml"),
        os.path.join("b", "2.EML"),
        os.path.join("b", "deeper", "3.eml"),
    ]
    assert found[1].raw == message("1")


def test_maildir_cur_and_new_but_not_tmp(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "Mail", create=True)
    box.add(message("new-one"))
    key = box.add(message("seen"))
    msg = box[key]
    msg.set_subdir("cur")
    msg.add_flag("S")
    box[key] = msg
    sub = box.add_folder("Archive")
    sub.add(message("archived"))
    (tmp_path / "Mail" / "tmp" / "123.partial").write_bytes(message("partial"))
    box.close()

    found = list(iter_sources([tmp_path / "Mail"]))
    subjects = sorted(s.raw.split(b"Subject: ")[1].split(b"\n")[0] for s in found)
    assert subjects == [b"archived", b"new-one", b"seen"]
    assert not any("tmp" in Path(name).parts for name in names(found, tmp_path))
    # deterministic: the same order twice
    assert [s.name for s in iter_sources([tmp_path / "Mail"])] == [s.name for s in found]


def test_mbox_with_three_messages(tmp_path: Path) -> None:
    path = tmp_path / "archive"  # no extension: detected by its From_ lines
    box = mailbox.mbox(path)
    for tag in ("m1", "m2", "m3"):
        box.add(message(tag))
    box.flush()
    box.close()

    found = list(iter_sources([path]))
    assert [s.name for s in found] == [f"{path}#1", f"{path}#2", f"{path}#3"]
    assert [s.raw for s in found] == [message(t) for t in ("m1", "m2", "m3")]


def test_mbox_by_extension_even_with_one_message(tmp_path: Path) -> None:
    path = tmp_path / "single.mbox"
    path.write_bytes(b"From someone@example.com Mon Sep  9 18:01:33 2002\n" + message("s"))
    assert [(s.name, s.raw) for s in iter_sources([path])] == [(f"{path}#1", message("s"))]


def test_empty_mbox_has_no_messages(tmp_path: Path) -> None:
    path = tmp_path / "empty.mbox"
    path.write_bytes(b"")
    assert list(iter_sources([path])) == []


def test_mbox_crlf_and_spam_style_separator(tmp_path: Path) -> None:
    path = tmp_path / "crlf.mbx"
    first = message("a").replace(b"\n", b"\r\n")
    second = message("b").replace(b"\n", b"\r\n")
    path.write_bytes(
        b"From x@example.com  Mon Sep  9 18:01:33 2002\r\n" + first + b"\r\n"
        b"From zq@[10.0.0.1] [ufa]  Sun Aug  5 09:51:15 2001\r\n" + second
    )
    assert [s.raw for s in iter_sources([path])] == [first, second]


def test_single_message_with_from_envelope_line_is_one_message(tmp_path: Path) -> None:
    # Old corpora (SpamAssassin) store one message per file with a From_ envelope line,
    # and bodies may contain unescaped lines starting with "From ".
    raw = (
        b"From fork-admin@xent.com  Mon Sep 30 17:56:46 2002\n"
        + message("old")
        + b"\nFrom here on we talk about Mon Sep 30 plans.\n"
    )
    path = tmp_path / "00001.eml"
    path.write_bytes(raw)
    assert list(iter_sources([path])) == [Source(str(path), raw)]


def test_body_line_starting_with_from_does_not_split_an_mbox(tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    body = b"Subject: s\n\nFrom slots to live tables, there is a lot.\n"
    path.write_bytes(
        b"From a@example.com Mon Sep  9 18:01:33 2002\n" + body + b"\n"
        b"From b@example.com Tue Sep 10 18:01:33 2002\n" + message("2")
    )
    assert [s.raw for s in iter_sources([path])] == [body, message("2")]


def test_missing_path_raises_source_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.eml"
    with pytest.raises(SourceError) as info:
        list(iter_sources([missing]))
    assert str(info.value) == f"cannot read '{missing}': No such file or directory"
    assert "\n" not in str(info.value)


def test_on_error_reports_and_continues(tmp_path: Path) -> None:
    good = tmp_path / "good.eml"
    good.write_bytes(message("g"))
    errors: list[SourceError] = []
    found = list(iter_sources([tmp_path / "missing.eml", good], on_error=errors.append))
    assert [s.name for s in found] == [str(good)]
    assert [e.path for e in errors] == [str(tmp_path / "missing.eml")]


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_in_directory(tmp_path: Path) -> None:
    secret = tmp_path / "secret.eml"
    secret.write_bytes(message("s"))
    secret.chmod(0)
    try:
        with pytest.raises(SourceError, match=r"cannot read '.*secret\.eml': Permission denied"):
            list(iter_sources([tmp_path]))
    finally:
        secret.chmod(0o600)


def test_empty_directory_is_not_an_error(tmp_path: Path) -> None:
    assert list(iter_sources([tmp_path])) == []


def test_is_lazy(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.eml").write_bytes(message(str(i)))
    it = iter_sources([tmp_path])
    first = next(it)
    (tmp_path / "2.eml").unlink()  # not read yet: reading it later fails
    assert first.name.endswith("0.eml")
    assert next(it).name.endswith("1.eml")
    with pytest.raises(SourceError, match=r"2\.eml"):
        next(it)


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeStdin:
        buffer = io.BytesIO(message("piped"))

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    assert list(iter_sources(["-"])) == [Source("-", message("piped"))]
