"""Store (real SQLite files), thread keys and the label vocabulary, one function at a time."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel
from support.mail import make

from guard import store as st
from guard.mail import parse_message
from guard.mailbox import labels as lb
from guard.mailbox import threads
from guard.mailbox.label_backends import LabelScheme

# --------------------------------------------------------------------------- store


def test_new_store_file_is_private_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "state" / "guard.sqlite3"
    store = st.Store(f"sqlite:///{path}")
    store.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    con = sqlite3.connect(path)
    assert con.execute("select max(version) from schema_version").fetchone()[0] == st.SCHEMA_VERSION
    tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    assert {"message", "finding", "folder_state", "thread", "scan_run", "label_copy"} <= tables


def test_existing_world_readable_store_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "guard.sqlite3"
    st.Store(f"sqlite:///{path}").close()
    path.chmod(0o644)
    st.Store(f"sqlite:///{path}").close()
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "guard.sqlite3"
    st.Store(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    con.execute("insert into schema_version (version, applied_at) values (99, '2030-01-01')")
    con.commit()
    con.close()
    with pytest.raises(st.StoreError, match=r"schema version 99.*upgrade inbox-guard"):
        st.Store(f"sqlite:///{path}")


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    con = sqlite3.connect(path)
    con.execute("create table notes (x text)")
    con.commit()
    con.close()
    with pytest.raises(st.StoreError, match="not an inbox-guard store"):
        st.Store(f"sqlite:///{path}")


def test_migrations_run_in_order_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "guard.sqlite3"
    st.Store(f"sqlite:///{path}").close()  # a database at the current version
    current = st.SCHEMA_VERSION
    calls: list[int] = []

    def add_column(conn: sa.Connection) -> None:
        calls.append(1)
        conn.execute(sa.text("ALTER TABLE message ADD COLUMN extra TEXT"))

    monkeypatch.setitem(st.MIGRATIONS, current, add_column)
    engine = sa.create_engine(f"sqlite:///{path}")
    assert st.migrate(engine, target=current + 1) == current + 1
    assert st.migrate(engine, target=current + 1) == current + 1  # nothing runs again
    engine.dispose()
    assert calls == [1]
    con = sqlite3.connect(path)
    cols = {r[1] for r in con.execute("pragma table_info(message)")}
    versions = [r[0] for r in con.execute("select version from schema_version order by version")]
    assert "extra" in cols and versions == [current, current + 1]


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "guard.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}")
    v2_tables = {"digest", "evidence", "draft"}
    v1 = [t for name, t in SQLModel.metadata.tables.items() if name not in v2_tables]
    SQLModel.metadata.create_all(engine, tables=v1)
    with engine.begin() as conn:
        conn.execute(sa.text("insert into schema_version values (1, '2026-11-01 00:00:00')"))
        conn.execute(
            sa.text(
                "insert into folder_state (account, folder, uidvalidity, last_uid, updated_at)"
                " values ('default', 'INBOX', 7, 42, '2026-11-01 00:00:00')"
            )
        )
    engine.dispose()
    store = st.Store(f"sqlite:///{path}")
    assert store.version == st.SCHEMA_VERSION
    with store.session() as s:
        state = st.get_folder_state(s, "default", "INBOX")
        assert state is not None and state.last_uid == 42  # existing data untouched
        assert st.evidence_missing(s, ["ab"]) == {"ab"}  # the new tables work
    store.close()


def test_missing_migration_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "guard.sqlite3"
    st.Store(f"sqlite:///{path}").close()
    engine = sa.create_engine(f"sqlite:///{path}")
    with pytest.raises(
        st.StoreError, match=f"no migration from schema version {st.SCHEMA_VERSION}"
    ):
        st.migrate(engine, target=st.SCHEMA_VERSION + 1)
    engine.dispose()


def test_unwritable_store_location_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(st.StoreError) as info:
        st.Store(f"sqlite:///{blocker}/sub/guard.sqlite3")
    assert "cannot open the store" in str(info.value) and "\n" not in str(info.value)


def test_database_password_is_never_shown() -> None:
    with pytest.raises(st.StoreError) as info:
        st.Store("postgresql+psycopg://guard:hunter2@127.0.0.1:1/x?connect_timeout=2")
    assert "hunter2" not in str(info.value)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'guard.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


def test_list_columns_are_typed_and_stored_as_before(store_url: str) -> None:
    """The typed views of the list columns write exactly the text the hand-written joins
    did (categories in the verdict's order, labels sorted one a line), and read back what
    was stored, empty items skipped, on both databases."""
    store = st.Store(store_url)
    with store.session() as s:
        location = {"folder": "INBOX", "uidvalidity": 1, "uid": 1, "content_hash": "h"}
        message = st.StoredMessage(
            account="a",
            thread_id="t",
            **location,
            recipients=st.join_commas(["b@example.org", "a@example.org"]),
            categories=st.join_commas(["phishing", "dispute"]),
            notes=st.join_lines(["imap.max_message_bytes: cut", "unreadable part"]),
        )
        message.label_set = {"keyword:$GuardScam", "folder:Guard/Scam"}
        thread = st.Thread(account="a", thread_id="t")
        thread.category_list = ["dispute", "phishing"]
        thread.label_list = ["scam", "level:high"]
        s.add_all([message, thread])
    with store.engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT recipients, categories, notes, labels FROM message")
        ).one()
        stored_thread = conn.execute(sa.text("SELECT categories, labels FROM thread")).one()
        # a row written by an older version, with the empty items its joins could leave
        conn.execute(sa.text("UPDATE thread SET categories = ',x,,y', labels = '\na\n\nb\n'"))
        conn.commit()
    assert tuple(stored) == (
        "b@example.org,a@example.org",
        "phishing,dispute",
        "imap.max_message_bytes: cut\nunreadable part",
        "folder:Guard/Scam\nkeyword:$GuardScam",
    )
    assert tuple(stored_thread) == ("dispute,phishing", "level:high\nscam")
    with store.session() as s:
        row = s.get(st.StoredMessage, message.id)
        assert row is not None
        assert row.recipient_list == ("b@example.org", "a@example.org")
        assert row.category_list == ("phishing", "dispute")
        assert row.note_list == ("imap.max_message_bytes: cut", "unreadable part")
        assert row.label_set == {"folder:Guard/Scam", "keyword:$GuardScam"}
        again = st.get_thread(s, "a", "t")
        assert again is not None
        assert (again.category_list, again.label_list) == (("x", "y"), ("a", "b"))
        assert st.split_commas(",x,,y") == ("x", "y") and st.split_lines("\na\n") == ("a",)
    store.close()


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize(
    ("subject", "base", "reply"),
    [
        ("Re: Logo", "logo", True),
        ("RE: re: Fwd: Logo", "logo", True),
        ("AW: Angebot", "angebot", True),
        ("RES: Orçamento", "orçamento", True),
        ("Отв: Проект", "проект", True),
        ("[Upwork] Re: Logo", "logo", True),
        ("Re[2]: Logo", "logo", True),
        ("Logo", "logo", False),
        ("Regarding the logo", "regarding the logo", False),
        ("Review: logo", "review: logo", False),
    ],
)
def test_reply_prefixes(subject: str, base: str, reply: bool) -> None:
    assert threads.strip_reply_prefixes(subject) == (base, reply)


def test_message_ids_from_headers() -> None:
    assert threads.message_ids("<a@x> <b@y>\r\n <c@z>") == ["a@x", "b@y", "c@z"]
    assert threads.message_ids("bare@id") == ["bare@id"]
    assert threads.message_ids("not an id") == []
    assert threads.message_ids(None) == []


def test_subject_key_depends_on_correspondents() -> None:
    a = parse_message(make(sender="ana@x.example", subject="Re: Logo")[0])
    a2 = parse_message(make(sender="ana@x.example", subject="Logo")[0])
    b = parse_message(make(sender="bob@y.example", subject="Re: Logo")[0])
    ka, ka2, kb = threads.subject_key(a), threads.subject_key(a2), threads.subject_key(b)
    assert ka[0] == ka2[0] and ka[1] is True and ka2[1] is False
    assert kb[0] != ka[0]


def test_parent_arriving_after_its_reply_joins_the_thread(tmp_path: Path) -> None:
    store = st.Store(f"sqlite:///{tmp_path / 'g.sqlite3'}")
    parent_raw, parent_id = make(subject="Budget")
    reply_raw, _ = make(subject="Re: Budget", reply_to_msg=parent_id)
    other_raw, _ = make(subject="Budget", sender="someone@else.example")
    with store.session() as s:
        t_reply = threads.assign(s, "a", parse_message(reply_raw), "h1")
        t_parent = threads.assign(s, "a", parse_message(parent_raw), "h2")
        t_other = threads.assign(s, "a", parse_message(other_raw), "h3")
    store.close()
    assert t_parent == t_reply
    assert t_other != t_reply


# --------------------------------------------------------------------------- labels


def test_label_spellings() -> None:
    payment = lb.category_label("off_platform_payment")
    assert LabelScheme.for_mode("gmail", "Guard").spell(payment) == [
        "gmail:Guard/Off-platform payment"
    ]
    assert LabelScheme.for_mode("keywords+folders", "Guard", ".").spell(payment) == [
        "keyword:$GuardOffPlatformPayment",
        "folder:Guard.Off-platform payment",
    ]
    assert lb.category_label("phishing").keyword("Guard") == "$Phishing"
    assert lb.level_label("high").keyword("My Guard!") == "$MyGuardHighRisk"


def test_thread_labels_take_the_riskiest_message() -> None:
    risk, labels = lb.thread_labels(
        [("none", []), ("high", ["off_platform_payment"]), ("low", ["dispute"])], "medium"
    )
    assert risk == "high"
    # the low-risk aside does not add its category
    assert {x.name for x in labels} == {"level:high", "off_platform_payment"}
    assert lb.thread_labels([("low", ["dispute"])], "medium") == ("low", frozenset())
    assert lb.thread_labels([("none", [])], "low") == ("none", frozenset())


def test_thread_labels_follow_what_the_user_taught() -> None:
    messages = [("high", ["off_platform_payment"]), ("medium", ["phishing"])]
    # marked safe for the payment request: only the phishing message still counts
    risk, labels = lb.thread_labels(messages, "medium", safe=["off_platform_payment"])
    assert risk == "medium" and {x.name for x in labels} == {"level:medium", "phishing"}
    # safe for everything it was flagged for: harmless, no label
    both = ["off_platform_payment", "phishing"]
    assert lb.thread_labels(messages, "medium", safe=both) == ("none", frozenset())
    # reported: labelled Reported with what the engine found, even below min_risk
    risk, labels = lb.thread_labels([("low", ["scam"])], "medium", reported=True)
    assert risk == "low" and {x.name for x in labels} == {"reported", "scam"}
    assert lb.REPORTED_LABEL.keyword("Guard") == "$GuardReported"
    assert lb.REPORTED_LABEL.path("Guard", ".") == "Guard.Reported"


def test_batch_assignment_joins_replies_in_any_order_and_merges(tmp_path: Path) -> None:
    store = st.Store(f"sqlite:///{tmp_path / 'g.sqlite3'}")
    a_raw, a_id = make(subject="Logo", sender="ana@x.example")
    b_raw, b_id = make(subject="Colours", sender="ana@x.example")
    # c replies to both a and b: the two threads become one
    c_raw, _ = make(
        subject="Re: Logo", sender="ana@x.example", reply_to_msg=b_id, references=[a_id]
    )
    d_raw, _ = make(subject="Unrelated", sender="bob@y.example")
    with store.session() as s:
        first = threads.assign_batch(s, "a", [(parse_message(a_raw), "ha", None)])
    with store.session() as s:
        batch = threads.assign_batch(
            s,
            "a",
            [(parse_message(r), h, None) for r, h in ((c_raw, "hc"), (b_raw, "hb"), (d_raw, "hd"))],
        )
    store.close()
    t_c, t_b, t_d = batch
    assert t_c == t_b == first[0]
    assert t_d != t_c
