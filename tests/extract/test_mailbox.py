"""Messages on disk for `scan`: .eml files, directories, mbox (mboxrd escapes, streamed) and
Maildirs."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from mailfilter.cli import mailbox
from mailfilter.cli.mailbox import count_messages, iter_messages


def msg(n: int, eol: bytes = b"\n", body: bytes = b"") -> bytes:
    text = (
        b"From: a@example.org\nTo: b@example.org\nSubject: message %d\n\n" % n
        + (body or b"Body of message %d.\n" % n)
    )
    return text.replace(b"\n", eol)


def mbox(messages: list[bytes], eol: bytes = b"\n") -> bytes:
    out = b""
    for m in messages:
        escaped = b"".join(
            (b">" + line if line.lstrip(b">").startswith(b"From ") else line)
            for line in m.splitlines(keepends=True)
        )
        out += b"From sender@example.org Mon Jan  1 00:00:00 2024" + eol + escaped + eol
    return out


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_single_eml(tmp_path: Path, eol: bytes) -> None:
    path = tmp_path / "one.eml"
    path.write_bytes(msg(1, eol))
    assert list(iter_messages([path])) == [(str(path), msg(1, eol))]
    assert count_messages([path]) == 1


def test_directory_recursive_in_order_without_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a.eml").write_bytes(msg(1))
    (tmp_path / "b" / "c.eml").write_bytes(msg(2))
    (tmp_path / "b" / "d").write_bytes(msg(3))
    (tmp_path / ".hidden").write_bytes(b"not mail")
    got = list(iter_messages([tmp_path]))
    assert [label for label, _ in got] == [
        str(tmp_path / "a.eml"), str(tmp_path / "b" / "c.eml"), str(tmp_path / "b" / "d")]
    assert [raw for _, raw in got] == [msg(1), msg(2), msg(3)]
    assert count_messages([tmp_path]) == 3


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_mbox_with_from_escapes(tmp_path: Path, eol: bytes) -> None:
    tricky = msg(2, eol, b"Hello\n\nFrom here on, a line that starts with From.\n"
                         b">From already quoted\n\nbye\n".replace(b"\n", eol))
    messages = [msg(1, eol), tricky, msg(3, eol)]
    path = tmp_path / "box.mbox"
    path.write_bytes(mbox(messages, eol))
    got = list(iter_messages([path]))
    assert [label for label, _ in got] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert [raw for _, raw in got] == messages
    assert count_messages([path]) == 3


def test_mbox_read_in_small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [msg(n, body=b"x" * (n * 7) + b"\n") for n in range(1, 40)] + [msg(40, body=b"\n")]
    path = tmp_path / "box"
    path.write_bytes(mbox(messages))
    for chunk in (1, 3, 7, 64):
        monkeypatch.setattr(mailbox, "CHUNK", chunk)
        assert [raw for _, raw in iter_messages([path])] == messages, chunk


def test_mbox_with_empty_messages(tmp_path: Path) -> None:
    path = tmp_path / "box"
    path.write_bytes(b"From a\n\nFrom b\n\nFrom c\nSubject: last\n\nhi\n")
    assert [raw for _, raw in iter_messages([path])] == [b"", b"", b"Subject: last\n\nhi\n"]


def test_mbox_is_streamed_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "big.mbox"
    one = mbox([msg(1, body=b"y" * 2000 + b"\n")])
    with path.open("wb") as f:
        for _ in range(10_000):  # about 21 MB
            f.write(one)
    tracemalloc.start()
    count = sum(1 for _ in iter_messages([path]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 10_000
    assert peak < 8 << 20
    assert count_messages([path]) == 10_000


def test_count_of_a_huge_mbox_is_an_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mailbox, "COUNT_EXACT_LIMIT", 40_000)
    path = tmp_path / "box"
    path.write_bytes(mbox([msg(n, body=b"z" * 100 + b"\n") for n in range(1000)]))
    estimate = count_messages([path])
    assert estimate is not None and 800 <= estimate <= 1200


def test_maildir(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "cur" / "1700000000.1.host:2,S").write_bytes(msg(1))
    (md / "new" / "1700000001.2.host").write_bytes(msg(2))
    (md / "tmp" / "1700000002.3.host").write_bytes(b"being delivered")
    (md / "dovecot-uidlist").write_bytes(b"3 V1 N3\n")
    sent = md / ".Sent"
    for sub in ("cur", "new", "tmp"):
        (sent / sub).mkdir(parents=True)
    (sent / "cur" / "1700000003.4.host:2,S").write_bytes(msg(3))
    got = list(iter_messages([md]))
    assert [label for label, _ in got] == [
        str(md / "cur" / "1700000000.1.host:2,S"),
        str(md / "new" / "1700000001.2.host"),
        str(sent / "cur" / "1700000003.4.host:2,S"),
    ]
    assert [raw for _, raw in got] == [msg(1), msg(2), msg(3)]
    assert count_messages([md]) == 3


def test_several_paths_of_different_kinds(tmp_path: Path) -> None:
    eml = tmp_path / "x.eml"
    eml.write_bytes(msg(1))
    box = tmp_path / "y.mbox"
    box.write_bytes(mbox([msg(2), msg(3)]))
    labels = [label for label, _ in iter_messages([eml, box])]
    assert labels == [str(eml), f"{box}:1", f"{box}:2"]
    assert count_messages([eml, box]) == 3


def test_missing_path_raises_at_once(tmp_path: Path) -> None:
    good = tmp_path / "ok.eml"
    good.write_bytes(msg(1))
    with pytest.raises(OSError, match="no such file") as info:
        iter_messages([good, tmp_path / "missing.eml"])
    assert info.value.filename == str(tmp_path / "missing.eml")
    assert count_messages([tmp_path / "missing.eml"]) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_path_raises(tmp_path: Path) -> None:
    path = tmp_path / "locked.eml"
    path.write_bytes(msg(1))
    path.chmod(0)
    try:
        with pytest.raises(OSError, match="permission denied"):
            iter_messages([path])
    finally:
        path.chmod(0o600)


def test_not_a_regular_file_raises(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        iter_messages([fifo])


def test_unreadable_path_raises_even_for_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.eml"
    path.write_bytes(msg(1))
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(PermissionError, match="permission denied"):
        iter_messages([path])
