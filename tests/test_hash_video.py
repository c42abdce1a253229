"""`mailfilter hash` on videos: kind, vPDQ compact strings, duration, exact hashes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from mailfilter.hashing.vpdq import VpdqFeature
from mailfilter.settings import Settings
from tests.video_factories import clip


def _hash_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailfilter", "hash", *args],
                          capture_output=True, text=True, timeout=120)


def test_hash_json_of_a_video(tmp_path: Path) -> None:
    path = tmp_path / "clip.webm"
    data = clip("vp9.webm", seconds=3.0)
    path.write_bytes(data)
    out = _hash_cli("--json", str(path))
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["kind"] == "video"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["md5"] == hashlib.md5(data).hexdigest()
    assert record["duration"] == 3.0
    assert (record["width"], record["height"]) == (320, 240)
    features = [VpdqFeature.from_str(s) for s in record["vpdq"]]
    assert [round(f.timestamp) for f in features] == [0, 1, 2]
    assert "error" not in record and "incomplete" not in record


def test_hash_text_of_a_video_and_a_broken_one(tmp_path: Path) -> None:
    good = tmp_path / "clip.mp4"
    good.write_bytes(clip("h264.mp4", seconds=2.0))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good.read_bytes()[:300])
    out = _hash_cli(str(good), str(broken))
    assert out.returncode == 2  # the broken one could not be read
    assert "320x240 mp4/h264  2.000s  frames sampled 2" in out.stdout
    assert "vpdq     2 features" in out.stdout
    records = [json.loads(line) for line in _hash_cli("--json", str(broken)).stdout.splitlines()]
    assert records[0]["kind"] == "video" and records[0]["error"]
    assert records[0]["sha1"] == hashlib.sha1(broken.read_bytes()).hexdigest()


def test_one_dispatch_decides_image_video_or_file() -> None:
    from mailfilter.fingerprint import FingerprintParams, fingerprint_file, fingerprint_media
    from mailfilter.model import AttachmentKind
    from tests.factories import image_bytes, photo_like
    from tests.video_factories import audio_only_mp4

    params = FingerprintParams.from_settings(Settings())
    video = fingerprint_file(clip("h264.mp4", seconds=2.0), params)
    assert video.kind is AttachmentKind.VIDEO and video.video is not None
    assert (video.video.container, video.video.codec) == ("mp4", "h264")
    assert video.video.decoded >= 2 and len(video.fingerprint.vpdq) == 2
    assert video.fingerprint == fingerprint_media(clip("h264.mp4", seconds=2.0),
                                                  AttachmentKind.VIDEO, params)
    audio = fingerprint_file(audio_only_mp4(), params)
    assert audio.kind is AttachmentKind.FILE and audio.fingerprint.skipped == "no-video-stream"
    image = fingerprint_file(image_bytes(photo_like(3), "PNG"), params)
    assert image.kind is AttachmentKind.IMAGE and image.video is None
    assert image.fingerprint.primary is not None and image.fingerprint.primary.pdq
    other = fingerprint_file(b"just some bytes", params)
    assert other.kind is AttachmentKind.FILE and other.fingerprint.frames == ()
    assert other.fingerprint.exact.md5 == hashlib.md5(b"just some bytes").hexdigest()


def test_hash_of_a_container_without_video_is_a_file(tmp_path: Path) -> None:
    from tests.video_factories import audio_only_mp4

    path = tmp_path / "song.m4a"
    path.write_bytes(audio_only_mp4())
    out = _hash_cli("--json", str(path))
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["kind"] == "file" and "error" not in record
