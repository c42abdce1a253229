"""`mailfilter hashes …`: import, add, stats, export, remove; outputs and exit codes.

The group object is tested directly with click's CliRunner, for both store backends; one
test runs the real command line once the group is wired into `mailfilter.cli`.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner, Result
from conftest import REPO, free_port
from factories import message, message_bytes, photo_like
from test_formats import pdq_like, random_hex

from mailfilter.cli.hashes import _Progress, hashes
from mailfilter.enrollment import centre_crop
from mailfilter.matching.backends import open_store
from mailfilter.matching.store import ImportProgress
from mailfilter.redis_connection import KeyLayout
from mailfilter.settings import load_settings


def write_config(path: Path, store: dict[str, str]) -> Path:
    body = "[store]\n" + "".join(f'{k} = "{v}"\n' for k, v in store.items())
    path.write_text(body)
    return path


@pytest.fixture(params=["local", "redis"])
def config(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str,
           redis_prefix: str) -> Iterator[Path]:
    if request.param == "local":
        yield write_config(tmp_path / "mf.toml", {"path": str(tmp_path / "store")})
        return
    yield write_config(tmp_path / "mf.toml", {"redis_url": redis_url, "key_prefix": redis_prefix})
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=KeyLayout(redis_prefix).tag + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def run(config: Path, *args: str) -> Result:
    command, rest = args[0], args[1:]
    return CliRunner().invoke(hashes, [command, "--config", str(config), *rest])


def test_import_stats_export_remove(config: Path, tmp_path: Path) -> None:
    good = [pdq_like() for _ in range(30)]
    lines = [*good[:10], "garbage", "0" * 64, *good[10:], good[0][:-2]]
    listing = tmp_path / "list.pdq"
    listing.write_text("\n".join(lines) + "\n")

    out = run(config, "import", "--list", "te", "--format", "pdq", str(listing))
    assert out.exit_code == 0, out.output
    assert "loaded 30" in out.output and "skipped 3" in out.output
    assert "first bad lines: 11 (bad pdq value (expected 64 hex digits)), " \
           "12 (degenerate pdq (all zeros)), 33 (bad pdq value" in out.output
    assert "warning: 1 degenerate" in out.output
    assert "list 'te' merged into: now 30 entries (pdq 30)" in out.output

    out = run(config, "import", "--list", "te", "--replace", "--json", str(listing))  # detected
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["format"] == "pdq" and report["committed"] is False  # same entries
    assert report["loaded"] == {"pdq": 30} and report["skipped_total"] == 3
    assert report["bad_lines"][0] == {"line": 11,
                                      "reason": "bad pdq value (expected 64 hex digits)"}

    md5 = tmp_path / "list.md5"
    md5.write_text("".join(f"{random_hex(16)}\n" for _ in range(4)))
    assert run(config, "import", "--list", "other", str(md5)).exit_code == 0

    out = run(config, "stats")
    assert out.exit_code == 0, out.output
    assert "version: 2" in out.output
    assert any(line.startswith("te ") and " 30 " in line for line in out.output.splitlines())
    stats = json.loads(run(config, "stats", "--json").output)
    assert stats["version"] == 2 and stats["totals"] == {"pdq": 30, "md5": 4}
    assert {s["name"]: s["counts"] for s in stats["lists"]} == {
        "other": {"md5": 4}, "te": {"pdq": 30}}

    out = run(config, "export", "--list", "te")
    assert out.exit_code == 0
    exported = [json.loads(line) for line in out.output.splitlines()]
    assert {e["value"] for e in exported} == set(good)
    assert set(exported[0]) == {"list", "algorithm", "value", "labels", "added"}
    assert len(run(config, "export").output.splitlines()) == 34

    dump = tmp_path / "dump.jsonl"
    dump.write_text(out.output)
    out = run(config, "import", "--list", "copy", str(dump))
    assert out.exit_code == 0 and "now 30 entries" in out.output

    out = run(config, "remove", "--list", "te")
    assert out.exit_code == 0 and "removed (30 entries)" in out.output
    out = run(config, "remove", "--list", "te")
    assert out.exit_code == 2 and out.output.strip() == "mailfilter: no list named 'te'"
    assert run(config, "export", "--list", "te").exit_code == 2


def test_import_failures_exit_2_with_one_line(config: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\nworld\n")
    out = run(config, "import", "--list", "x", str(junk))
    assert out.exit_code == 2
    assert out.output.count("\n") == 1 and "unknown list format" in out.output

    out = run(config, "import", "--list", "x", "--format", "sha1", str(junk))
    assert out.exit_code == 2
    assert "nothing could be loaded" in out.output and "skipped 2" in out.output

    out = run(config, "import", "--list", "x", str(tmp_path / "missing.txt"))
    assert out.exit_code == 2 and "missing.txt" in out.output
    assert "Traceback" not in out.output

    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aa">]><queryResult/>')
    out = run(config, "import", "--list", "x", str(bomb))
    assert out.exit_code == 2 and "DOCTYPE" in out.output
    assert json.loads(run(config, "stats", "--json").output)["lists"] == []


def test_store_unreachable_exits_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "mf.toml",
                       {"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    out = run(cfg, "stats")
    assert out.exit_code == 2
    assert out.output.startswith("mailfilter: store unavailable: redis redis://127.0.0.1:")
    assert out.output.count("\n") == 1


def test_add_enrolls_images_and_catches_cropped_copies(config: Path, tmp_path: Path) -> None:
    image = tmp_path / "held.png"
    photo_like(11, 640, 480).save(image)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")

    out = run(config, "add", "--list", "own", "--label", "case-17", str(image), str(not_image))
    assert out.exit_code == 0, out.output
    assert "crop 5%" in out.output and "crop 10%" in out.output
    assert "exact hashes only" in out.output
    assert "list 'own':" in out.output

    again = run(config, "add", "--list", "own", "--json", str(image))
    assert again.exit_code == 0
    records = [json.loads(line) for line in again.output.splitlines()]
    variants = {(e["algorithm"], e["variant"]) for e in records[0]["entries"]}
    assert {("pdq", "original"), ("pdq", "crop 5%"), ("pdq", "crop 10%"),
            ("gridhist", "original"), ("md5", "file"), ("sha256", "file")} <= variants
    assert records[-1]["added"] == 0  # everything was there already

    # A copy cropped by ~12% is found through the crop entries.
    from PIL import Image

    with Image.open(image) as im:
        w, h = im.size
        crop = im.crop((int(w * 0.06), int(h * 0.06), int(w * 0.94), int(h * 0.94)))
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
    from mailfilter.fingerprint import FingerprintParams, fingerprint_image

    settings = load_settings(config).settings
    fp = fingerprint_image(buf.getvalue(), FingerprintParams.from_settings(settings))
    queries = [h for f in fp.frames if f.pdq for h in f.pdq_dihedral]
    with open_store(settings.store) as st:
        index = st.load_index()
        exported = list(st.export("own"))
    matches = index.search_pdq(queries, settings.match.pdq_max_distance)
    assert [m.list_name for m in matches] and matches[0].labels == ("case-17",)
    assert {e.labels for e in exported} == {("case-17",)}


def test_add_enrolls_a_video_and_any_file_then_scan_matches_a_transcode(
        config: Path, tmp_path: Path) -> None:
    """`hashes add` of a video stores its exact hashes and its vPDQ, of any other file its
    exact hashes; `mailfilter scan` against the store then matches a transcode of the video
    (another size, codec and container) and the file, and not an unrelated video."""
    from PIL import Image
    from video_factories import encode, scene_frames

    frames = scene_frames(6, 10, 320, 240, seed=161)
    held = tmp_path / "held.mp4"
    held.write_bytes(encode(frames, "h264.mp4", 10))
    other = tmp_path / "other.bin"
    other.write_bytes(np.random.default_rng(16).integers(0, 256, 4096, np.uint8).tobytes())

    out = run(config, "add", "--list", "own", "--label", "case-16", str(held), str(other))
    assert out.exit_code == 0, out.output
    assert "vpdq" in out.output and "features (pdq,quality,seconds)  video" in out.output
    assert "not an image or video; exact hashes only" in out.output
    again = run(config, "add", "--list", "own", "--json", str(held), str(other))
    assert again.exit_code == 0, again.output
    records = [json.loads(line) for line in again.output.splitlines()]
    assert {e["algorithm"] for e in records[0]["entries"]} == {"md5", "sha1", "sha256", "vpdq"}
    [video_entry] = [e for e in records[0]["entries"] if e["algorithm"] == "vpdq"]
    assert len(video_entry["value"]) == 6 and video_entry["variant"] == "video"
    assert {e["algorithm"] for e in records[1]["entries"]} == {"md5", "sha1", "sha256"}
    assert records[-1]["added"] == 0  # everything was there already
    stats = json.loads(run(config, "stats", "--json").output)
    [own] = [info for info in stats["lists"] if info["name"] == "own"]
    assert own["counts"]["vpdq"] == 6 and own["counts"]["md5"] == 2

    smaller = [np.asarray(Image.fromarray(f).resize((256, 192), Image.Resampling.LANCZOS))
               for f in frames]
    messages = {
        "transcode.eml": ("copy.webm", "video/webm", encode(smaller, "vp9.webm", 10)),
        "file.eml": ("data.bin", "application/octet-stream", other.read_bytes()),
        "unrelated.eml": ("other.mp4", "video/mp4",
                          encode(scene_frames(6, 10, 320, 240, seed=162), "h264.mp4", 10)),
    }
    paths = []
    for name, attachment in messages.items():
        path = tmp_path / name
        path.write_bytes(message_bytes(message(attachments=[attachment])))
        paths.append(str(path))
    scanned = subprocess.run(
        [sys.executable, "-m", "mailfilter", "scan", "--json", "--config", str(config), *paths],
        capture_output=True, text=True, timeout=300)
    assert scanned.returncode == 1, scanned.stderr
    results = {Path(r["source"]).name: r for r in map(json.loads, scanned.stdout.splitlines())}
    assert {name: r["verdict"] for name, r in results.items()} == {
        "transcode.eml": "match", "file.eml": "match", "unrelated.eml": "clean"}
    [video_match] = results["transcode.eml"]["attachments"][0]["matches"]
    assert (video_match["list"], video_match["algorithm"], video_match["labels"]) == (
        "own", "vpdq", ["case-16"])
    file_matches = results["file.eml"]["attachments"][0]["matches"]
    assert {m["algorithm"] for m in file_matches} == {"md5", "sha1", "sha256"}


def test_add_unreadable_image_exits_2(config: Path, tmp_path: Path) -> None:
    out = run(config, "add", "--list", "own", str(tmp_path / "nope.jpg"))
    assert out.exit_code == 2 and "cannot read" in out.output


def test_centre_crop() -> None:
    luma = np.zeros((200, 100), np.float32)
    assert centre_crop(luma, 0.10).shape == (180, 90)
    assert centre_crop(luma, 0.05).shape == (190, 96)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal() -> None:
    tty = _Tty()
    progress = _Progress(tty)
    progress(ImportProgress("parse", 20000, 19990, 10, 2.0))
    progress(ImportProgress("done", 20000, 19990, 10, 2.5))
    progress.finish()
    text = tty.getvalue()
    assert "20,000 lines" in text and "10,000 lines/s" in text and "skipped 10" in text
    assert text.endswith("\n")
    quiet = io.StringIO()
    progress = _Progress(quiet)
    progress(ImportProgress("parse", 1, 1, 0, 1.0))
    progress.finish()
    assert quiet.getvalue() == ""


def test_real_command_line(tmp_path: Path) -> None:
    import click

    from mailfilter import cli as cli_module

    assert cli_module.cli.get_command(click.Context(cli_module.cli), "hashes") is hashes
    cfg = write_config(tmp_path / "mf.toml", {"path": str(tmp_path / "store")})
    listing = tmp_path / "l.txt"
    listing.write_text("".join(f"{random_hex(20)}\n" for _ in range(3)))
    out = subprocess.run(
        [sys.executable, "-m", "mailfilter", "hashes", "import", "--config", str(cfg),
         "--list", "l", str(listing)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "loaded 3 (sha1 3)" in out.stdout and out.stderr == ""
