"""The service reads workers' replies without trusting them (mailfilter/worker_results.py):
real worker processes that write what a compromised worker would (tests/worker_tasks.py
finds the reply socket the way injected code would), and every real task result type
through the pool."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import io
import logging
import os
import pickle
import struct
import types
import typing
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import worker_tasks as wt
from factories import jpeg, message, message_bytes, png
from video_factories import clip
from waiting import wait_until

import mailfilter.fingerprint
import mailfilter.hashing.vpdq
import mailfilter.model
import mailfilter.scanner
import mailfilter.video
from mailfilter import worker_results, workers
from mailfilter.errors import SkipImage, WorkerFailure
from mailfilter.extract import extract
from mailfilter.fingerprint import FingerprintParams, fingerprint_file, fingerprint_media
from mailfilter.matching.index import HashIndex
from mailfilter.model import AttachmentKind, Verdict
from mailfilter.scanner import Scanner, extract_and_fingerprint
from mailfilter.settings import Settings
from mailfilter.worker_results import RESULT_TYPES, ResultRefused, dumps, loads
from mailfilter.workers import RemoteError, WorkerPool

SETTINGS = Settings()
PARAMS = FingerprintParams.from_settings(SETTINGS)

#: Every task the service submits to the pool, by what it returns.
TASKS = (extract, extract_and_fingerprint, fingerprint_media, fingerprint_file,
         mailfilter.fingerprint.fingerprint_image)


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(processes=2, memory_limit=0, max_tasks_per_worker=0) as p:
        assert p.wait_ready(30)
        yield p


# --- the allow-list is the tasks' result types -------------------------------------------


def _names() -> dict[str, Any]:
    """What the modules' annotations name (some only under TYPE_CHECKING)."""
    found: dict[str, Any] = {}
    for module in (mailfilter.model, mailfilter.video, mailfilter.hashing.vpdq,
                   mailfilter.fingerprint, mailfilter.scanner):
        found.update(vars(module))
    return found


def _walk(tp: Any, seen: set[type]) -> None:
    origin = typing.get_origin(tp)
    if origin is not None or isinstance(tp, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not Ellipsis:
                _walk(arg, seen)
        return
    if tp in (type(None), str, int, float, bool, bytes) or tp in seen:
        return
    assert isinstance(tp, type), f"{tp!r}: a result type the walk does not know"
    seen.add(tp)
    if dataclasses.is_dataclass(tp):
        for hint in typing.get_type_hints(tp, localns=_names()).values():
            _walk(hint, seen)
    else:
        assert issubclass(tp, enum.Enum), f"{tp!r}: neither a dataclass nor an enum"


def declared_result_types() -> set[type]:
    seen: set[type] = set()
    for task in TASKS:
        _walk(typing.get_type_hints(task, localns=_names())["return"], seen)
    return seen


def test_the_allow_list_is_the_declared_result_types() -> None:
    declared = {(t.__module__, t.__qualname__) for t in declared_result_types()}
    assert declared - RESULT_TYPES == set(), "add these to worker_results.RESULT_TYPES"
    assert RESULT_TYPES - declared == set(), "no task returns these any more: drop them"


def _sample(tp: Any, depth: int = 0) -> Any:
    """A value of the declared type, every field filled (not its default)."""
    origin = typing.get_origin(tp)
    if isinstance(tp, types.UnionType) or origin is typing.Union:
        return _sample(next(a for a in typing.get_args(tp) if a is not type(None)), depth)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_sample(args[0], depth + 1) for _ in range(2))
        return tuple(_sample(a, depth + 1) for a in args)
    samples = {str: "é-text", int: 7, float: 2.5, bool: True, bytes: b"\0\xff" * 40_000}
    if tp in samples:
        return samples[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return list(tp)[-1]
    assert dataclasses.is_dataclass(tp) and isinstance(tp, type)
    hints = typing.get_type_hints(tp, localns=_names())
    return tp(**{f.name: _sample(hints[f.name], depth + 1) for f in dataclasses.fields(tp)})


@pytest.mark.parametrize("cls", sorted(declared_result_types(), key=lambda t: t.__qualname__),
                         ids=lambda t: t.__qualname__)
def test_every_result_type_round_trips(cls: type) -> None:
    value = _sample(cls)
    back = loads(dumps(("tag", value, [value], {"k": value})))
    assert back == ("tag", value, [value], {"k": value})
    if isinstance(value, enum.Enum):
        assert back[1] is value  # the member itself, not a copy


def test_exceptions_round_trip_with_their_attributes() -> None:
    for exc in (SkipImage("too-many-pixels", "20000x20000"), PermissionError(13, "no", "/x"),
                ValueError("bad", 3), RemoteError("r")):
        back = loads(dumps(exc))
        assert type(back) is type(exc) and back.args == exc.args
        assert vars(back) == vars(exc)
    assert loads(dumps(PermissionError(13, "no", "/x"))).filename == "/x"


# --- what the service refuses, without running it ------------------------------------------


def _text(text: str) -> bytes:
    return pickle.SHORT_BINUNICODE + bytes([len(text)]) + text.encode()


def _refused_pickles(marker: str) -> dict[str, bytes]:
    opens = wt.RunsCodeWhenUnpickled(open, marker, "w")
    shell = wt.RunsCodeWhenUnpickled(os.system, f"touch {marker}")
    # state set on an existing object (BUILD): here the service's own enum member
    enum_build = b"".join([
        pickle.PROTO, b"\x05", pickle.BININT1, bytes([workers._OK]),
        _text("mailfilter.model"), _text("AttachmentKind"), pickle.STACK_GLOBAL,
        _text("image"), pickle.TUPLE1, pickle.REDUCE,
        pickle.EMPTY_DICT, _text("_value_"), _text("x"), pickle.SETITEM, pickle.BUILD,
        pickle.TUPLE2, pickle.STOP])
    return {
        "open": pickle.dumps((workers._OK, opens), 5),
        "os.system": pickle.dumps((workers._OK, shell), 5),
        "os.system, protocol 0": pickle.dumps((workers._OK, shell), 0),
        "exception": worker_results.dumps((workers._ERROR, (pickle.dumps(opens, 5), "x", "y",
                                                            ""))),
        "pickle's own dataclass": pickle.dumps(
            (workers._OK, mailfilter.model.ExactHashes("a", "b", "c")), 5),
        "enum state": enum_build,
        "memo bomb": b"\x80\x05N" + pickle.LONG_BINPUT + struct.pack("<I", 2**31) + b".",
        "not a reply": dumps(["a", "list"]),
        "garbage": os.urandom(3000),
        "empty": b"",
    }


@pytest.mark.parametrize("kind", list(_refused_pickles("m")))
def test_loads_refuses(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    data = _refused_pickles(str(marker))[kind]
    try:
        workers._decode_reply(data)
    except ResultRefused:
        pass
    else:
        raise AssertionError(f"{kind}: not refused")
    assert not marker.exists()
    assert AttachmentKind.IMAGE.value == "image"


def test_an_honest_worker_does_not_send_what_the_service_refuses(
        pool: WorkerPool, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(RemoteError, match="is not a result type the service accepts"):
        pool.submit(wt.return_runs_code, str(marker), deadline=5).result(timeout=10)
    # an exception that cannot come back as itself comes back by name and text
    with pytest.raises(RemoteError, match=r"builtins\.ValueError: carries an object"):
        pool.submit(wt.raise_with_runs_code, str(marker), deadline=5).result(timeout=10)
    # (pickle would send its notes, which the service does not set: by name too)
    with pytest.raises(RemoteError, match=r"builtins\.KeyError: 'k'"):
        pool.submit(wt.raise_with_note, deadline=5).result(timeout=10)
    assert not marker.exists()
    assert pool.stats().refused == 0 and pool.stats().crashes == 0


# --- a compromised worker, in real processes -----------------------------------------------


@pytest.mark.parametrize("kind", ["open", "os.system", "exception", "enum state", "memo bomb",
                                  "not a reply", "garbage", "empty"])
def test_a_refused_reply_fails_the_task_and_replaces_the_worker(
        pool: WorkerPool, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    marker = tmp_path / "marker"  # (workers may not write here: only this process could)
    payload = _refused_pickles(str(marker))[kind]
    other = pool.submit(wt.sleep_then, 0.5, "other", deadline=10)
    with caplog.at_level(logging.WARNING, logger="mailfilter.workers"), \
            pytest.raises(WorkerFailure) as info:
        pool.submit(wt.write_reply, payload, deadline=10).result(timeout=10)
    assert info.value.reason == "worker-result-refused"
    assert not marker.exists()
    assert AttachmentKind.IMAGE.value == "image"
    assert other.result(timeout=10) == "other"  # the other worker went on meanwhile
    assert [pool.submit(wt.square, i, deadline=5).result(timeout=10) for i in range(4)] == [
        0, 1, 4, 9]
    assert wait_until(lambda: pool.stats().alive == 2)
    stats = pool.stats()
    assert (stats.refused, stats.crashes, stats.completed) == (1, 0, 5)
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert str(marker) not in line and "touch" not in line  # never the payload


def _frame(data: bytes) -> bytes:
    return struct.pack("!Q", len(data)) + data


@pytest.mark.parametrize("raw, why", [
    (struct.pack("!Q", 1 << 62), "over the"),  # refused before anything is allocated
    (b"\xff" * 5000, "over the"),
    (_frame(dumps((workers._OK, 1))) * 2, "bytes after the end"),
])
def test_garbage_on_the_reply_socket(pool: WorkerPool, raw: bytes, why: str) -> None:
    with pytest.raises(WorkerFailure) as info:
        pool.submit(wt.write_raw, raw, deadline=10).result(timeout=10)
    assert info.value.reason == "worker-result-refused" and why in info.value.detail
    assert pool.submit(wt.add, 2, 3, deadline=5).result(timeout=10) == 5
    assert pool.stats().refused == 1


def test_half_a_reply_then_silence_does_not_stop_the_pool(pool: WorkerPool) -> None:
    stalled = pool.submit(wt.write_raw, _frame(dumps((workers._OK, "x" * 100)))[:40], 30,
                          deadline=1.5)
    # the dispatcher reads without waiting: the other worker's results keep coming
    assert [pool.submit(wt.square, i, deadline=5).result(timeout=5) for i in range(20)] == [
        i * i for i in range(20)]
    assert not stalled.done()
    with pytest.raises(WorkerFailure) as info:
        stalled.result(timeout=10)
    assert info.value.reason == "deadline"


def test_a_reply_over_the_size_limit() -> None:
    with WorkerPool(processes=1, memory_limit=0, max_result_bytes=64 * 1024) as pool:
        assert pool.submit(wt.return_bytes, 60_000, deadline=5).result(timeout=10) == (
            b"x" * 60_000)
        with pytest.raises(WorkerFailure) as info:
            pool.submit(wt.return_bytes, 70_000, deadline=5).result(timeout=10)
        assert info.value.reason == "worker-result-refused"
        assert "over the 65536-byte limit" in info.value.detail
        assert pool.submit(wt.add, 1, 1, deadline=5).result(timeout=10) == 2
    with WorkerPool(processes=1, memory_limit=300 << 20) as pool:
        assert pool._max_result == 300 << 20  # none bigger fits the worker


# --- every real task result through the pool ---------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


RAW = message_bytes(message(attachments=[
    ("photo.jpg", "image/jpeg", jpeg(3)),
    ("photos.zip", "application/zip", _zip({"a.png": png(4, 200, 150), "b.jpg": jpeg(5)})),
    ("clip.mp4", "video/mp4", clip(seconds=2.0)),
]))


def test_every_task_result_through_the_pool_is_what_the_task_returned(
        pool: WorkerPool) -> None:
    extraction = pool.submit(extract, RAW, SETTINGS.extract, deadline=60).result(timeout=60)
    assert extraction == extract(RAW, SETTINGS.extract)
    kinds = [a.kind for a in extraction.attachments]
    assert kinds.count(AttachmentKind.IMAGE) == 3 and kinds.count(AttachmentKind.VIDEO) == 1
    scanned = pool.submit(extract_and_fingerprint, RAW, SETTINGS.extract, PARAMS,
                          deadline=60).result(timeout=60)
    assert scanned[:3] == extract_and_fingerprint(RAW, SETTINGS.extract, PARAMS)[:3]
    for a in extraction.attachments:
        got = pool.submit(fingerprint_file, a.data, PARAMS, a.kind, deadline=60).result(60)
        assert got == fingerprint_file(a.data, PARAMS, a.kind)
        if a.kind is AttachmentKind.VIDEO:
            assert got.video is not None and got.video.frames and got.video.vpdq
    assert pool.stats().refused == 0


def test_the_scanner_over_an_image_an_archive_and_a_video(pool: WorkerPool) -> None:
    index = HashIndex.build([])
    result = asyncio.run(Scanner(SETTINGS, pool, lambda: index).scan(RAW, "test"))
    assert result.verdict is Verdict.CLEAN, result
    media = [a for a in result.attachments if a.kind is not AttachmentKind.FILE]
    kinds = [a.kind for a in media]
    assert kinds.count(AttachmentKind.IMAGE) == 3 and kinds.count(AttachmentKind.VIDEO) == 1
    assert all(a.fingerprint.frames for a in media)
    assert any(a.filename == "photos.zip" and a.fingerprint.exact.sha256
               for a in result.attachments)  # the archive itself: a file, by its hashes
    assert pool.stats().refused == 0
