"""Exact hashes of every file (issue 16, item 1): attachments, container members and
carved payloads that are not images are matched by MD5/SHA-1/SHA-256 like images are;
message bodies are not hashed. Run through `mailfilter scan`, as an operator would."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from factories import jpeg, message, message_bytes
from video_factories import clip

RANDOM_BINARY = os.urandom(4096)


def mp4(tmp_path: Path) -> bytes:
    """A small benign generated video (PyAV's encoders: no system ffmpeg needed)."""
    return clip("h264.mp4", seconds=1.0, fps=10, width=160, height=120)


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def scan(tmp_path: Path, raw: bytes, listed: list[bytes], fmt: str = "md5"
         ) -> tuple[int, dict[str, object]]:
    mail = tmp_path / "m.eml"
    mail.write_bytes(raw)
    hashes = tmp_path / f"known.{fmt}"
    algo = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}[fmt]
    hashes.write_text("".join(algo(d).hexdigest() + "\n" for d in listed) or "0" * 32 + "\n")
    env = {**os.environ, "MAILFILTER_STORE__PATH": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-m", "mailfilter", "scan", "--json", "--hashes",
                          str(hashes), "--hashes-format", fmt, str(mail)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout.splitlines()[0])


def paths_matched(record: dict[str, object]) -> set[str]:
    attachments = record["attachments"]
    assert isinstance(attachments, list)
    return {a["mime_path"] for a in attachments if a["matches"]}


def test_random_binary_matched_by_md5_bare_and_in_a_zip(tmp_path: Path) -> None:
    bare = message_bytes(message(attachments=[
        ("blob.bin", "application/octet-stream", RANDOM_BINARY)]))
    code, record = scan(tmp_path, bare, [RANDOM_BINARY])
    assert code == 1 and record["verdict"] == "match"
    assert paths_matched(record) == {"2"}
    [kind] = [a["kind"] for a in record["attachments"]]  # type: ignore[union-attr]
    assert kind == "file"
    packed = message_bytes(message(attachments=[
        ("blob.zip", "application/zip", zipped("inner/blob.bin", RANDOM_BINARY))]))
    code, record = scan(tmp_path, packed, [RANDOM_BINARY])
    assert code == 1 and paths_matched(record) == {"2/blob.zip/inner/blob.bin"}


def test_the_same_bytes_twice_are_one_file(tmp_path: Path) -> None:
    raw = message_bytes(message(attachments=[
        ("blob.bin", "application/octet-stream", RANDOM_BINARY),
        ("blob.zip", "application/zip", zipped("inner/blob.bin", RANDOM_BINARY)),
    ]))
    code, record = scan(tmp_path, raw, [RANDOM_BINARY])
    assert code == 1 and paths_matched(record) == {"2"}
    files = [a["mime_path"] for a in record["attachments"]]  # type: ignore[union-attr]
    assert files == ["2", "3"]  # the zip itself is a file too; its member is part 2 again


@pytest.mark.parametrize("fmt", ["md5", "sha1", "sha256"])
def test_a_video_is_matched_by_its_exact_hash(tmp_path: Path, fmt: str) -> None:
    video = mp4(tmp_path)
    for name, ctype, data, where in (
        ("clip.mp4", "video/mp4", video, "2"),
        ("clips.zip", "application/zip", zipped("clip.mp4", video), "2/clips.zip/clip.mp4"),
    ):
        code, record = scan(tmp_path, message_bytes(message(attachments=[(name, ctype, data)])),
                            [video], fmt)
        assert code == 1 and paths_matched(record) == {where}


def test_unlisted_files_and_bodies(tmp_path: Path) -> None:
    """Nothing matches what is not listed; the message body is not a file (a body that
    equals a listed file's bytes does not match), an attached text file is."""
    note = b"the meeting is at ten\n"
    raw = message_bytes(message(body=note.decode(), attachments=[
        ("blob.bin", "application/octet-stream", RANDOM_BINARY),
        ("photo.jpg", "image/jpeg", jpeg(3)),
    ]))
    code, record = scan(tmp_path, raw, [note])
    assert code == 0 and record["verdict"] == "clean"
    kinds = sorted(a["kind"] for a in record["attachments"])  # type: ignore[union-attr]
    assert kinds == ["file", "image"]
    attached = message_bytes(message(attachments=[("note.txt", "text/plain", note)]))
    code, record = scan(tmp_path, attached, [note])
    assert code == 1 and paths_matched(record) == {"2"}
