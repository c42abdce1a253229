"""The decode + hash task and the `hash` command, end to end on generated images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from factories import image_bytes, jpeg, photo_like
from PIL import Image, ImageOps

from mailfilter.fingerprint import FingerprintParams, fingerprint_image
from mailfilter.hashing.pdq import hamming
from mailfilter.settings import load_settings

PARAMS = FingerprintParams.from_settings(load_settings(None, {}).settings)


def test_exact_hashes_and_pdq_of_a_photo() -> None:
    data = jpeg(1)
    fp = fingerprint_image(data, PARAMS)
    assert fp.skipped is None
    assert (fp.width, fp.height, fp.image_format) == (640, 480, "JPEG")
    import hashlib

    assert fp.exact.sha256 == hashlib.sha256(data).hexdigest()
    primary = fp.primary
    assert primary is not None and primary.pdq is not None
    assert primary.pdq_quality >= 80
    assert len(primary.pdq_dihedral) == 8 and primary.pdq_dihedral[0] == primary.pdq
    assert primary.gridhist is not None


def test_a_flipped_copy_is_found_among_the_dihedral_hashes() -> None:
    img = photo_like(2)
    original = fingerprint_image(image_bytes(img), PARAMS).primary
    flipped = fingerprint_image(image_bytes(ImageOps.mirror(img)), PARAMS).primary
    assert original is not None and flipped is not None
    assert original.pdq is not None and flipped.pdq is not None
    assert hamming(original.pdq, flipped.pdq) > 31
    assert min(hamming(original.pdq, h) for h in flipped.pdq_dihedral) <= 10


def test_padded_image_gets_a_trimmed_fingerprint_close_to_the_original() -> None:
    img = photo_like(3)
    padded = ImageOps.expand(img, border=60, fill=(0, 0, 0))
    original = fingerprint_image(image_bytes(img), PARAMS).primary
    fp = fingerprint_image(image_bytes(padded), PARAMS)
    trimmed = [f for f in fp.frames if f.trimmed]
    assert original is not None and original.pdq is not None
    assert trimmed and trimmed[0].pdq is not None
    assert hamming(original.pdq, trimmed[0].pdq) <= 16


def test_flat_and_tiny_images_are_flagged_not_hashed() -> None:
    flat = fingerprint_image(image_bytes(Image.new("RGB", (300, 300), (90, 90, 90))), PARAMS)
    assert flat.primary is not None and flat.primary.pdq is None
    assert flat.primary.reason == "low-quality"
    tiny = fingerprint_image(image_bytes(photo_like(4, 40, 30), "PNG"), PARAMS)
    assert tiny.primary is not None and tiny.primary.reason == "too-small"
    assert tiny.primary.pdq is None and tiny.primary.gridhist is None


def test_garbage_keeps_exact_hashes_and_a_reason() -> None:
    fp = fingerprint_image(b"\xff\xd8\xff\xe0" + bytes(200), PARAMS)
    assert fp.skipped is not None and fp.frames == ()
    assert len(fp.exact.md5) == 32


def test_animated_gif_frames_are_all_fingerprinted() -> None:
    frames = [photo_like(seed, 200, 150).quantize(64) for seed in (5, 6, 7)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    fp = fingerprint_image(buf.getvalue(), PARAMS)
    untrimmed = [f for f in fp.frames if not f.trimmed]
    assert [f.frame for f in untrimmed] == [0, 1, 2]
    assert len({f.pdq for f in untrimmed}) == 3


def _hash_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailfilter", "hash", *args],
                          capture_output=True, text=True, timeout=120)


def test_hash_json_contract(tmp_path: Path) -> None:
    good = tmp_path / "photo.jpg"
    good.write_bytes(jpeg(8))
    out = _hash_cli("--json", str(good))
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    for key in ("file", "width", "height", "md5", "sha1", "sha256", "pdq", "pdq_quality",
                "gridhist"):
        assert key in record
    assert len(record["pdq"]) == 64 and record["pdq_quality"] >= 80


def test_hash_reports_failures_per_file_and_exits_2(tmp_path: Path) -> None:
    good = tmp_path / "photo.png"
    good.write_bytes(image_bytes(photo_like(9), "PNG"))
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    broken = tmp_path / "broken.png"
    broken.write_bytes(image_bytes(photo_like(9), "PNG")[:20])
    out = _hash_cli("--json", str(good), str(text), str(broken), str(tmp_path / "missing.jpg"))
    assert out.returncode == 2
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(good), str(text), str(broken),
                                            str(tmp_path / "missing.jpg")]
    assert "error" not in records[0] and records[0]["kind"] == "image"
    # Any other file: its exact hashes, not an error.
    assert records[1]["kind"] == "file" and "error" not in records[1]
    assert set(records[1]) == {"file", "kind", "md5", "sha1", "sha256"}
    assert records[2]["kind"] == "image" and "error" in records[2]
    assert records[3]["error"].startswith("cannot read")
    assert "Traceback" not in out.stderr


def test_hash_of_a_file_that_is_no_picture_exits_0(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    out = _hash_cli("--json", str(text))
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["kind"] == "file"
    assert record["md5"] == "f03bad8114ea048ed5390cd5bc76cfa8"  # md5sum of the same bytes


def test_hash_matches_the_reference_vector() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "pdq"
    path = shared / "images" / "bridge-mods" / "aaa-orig.jpg"
    if not path.exists():
        import pytest

        pytest.skip("../shared/vectors not beside the repo")
    expected = next(line.split(",")[1] for line in (shared / "expected.csv").read_text().split()
                    if line.startswith("bridge-mods/aaa-orig.jpg,"))
    record = json.loads(_hash_cli("--json", str(path)).stdout)
    assert hamming(record["pdq"], expected) <= 2
    assert np.isfinite(record["pdq_quality"])
