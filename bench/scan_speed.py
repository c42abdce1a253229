"""How fast does `mailfilter scan` go through a mailbox? Messages/s and images/s, both cores.

Builds an mbox of N messages (default 1,000) with a realistic mix -- half text only, a
quarter with one photo, 15% with 2-4 photos, 10% with a zip of 2-3 photos -- from real
benign photos (scikit-image's samples and the shared PDQ test photos, each re-encoded per
message at ~0.5-1.5 MP so no two attachments are byte-identical), then times the real
command, `mailfilter scan --json`, end to end (process start, extraction and fingerprinting
in the worker pool on every core, matching against a small list).

Baselines measured in the same run, on the same mbox:
- parse only: Python's `mailbox` + `email` reading every message and walking its parts
  (one core; the floor of any Python scanner, nothing decoded);
- reference PDQ: Meta's C++ PDQ (`pdqhash`) on a full decode of every photo in the mbox,
  one core -- what hashing alone costs without our reduced decoding.

    python bench/scan_speed.py [--messages 1000] [--json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import email
import email.policy
import io
import json
import mailbox
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO.parent / "shared" / "vectors" / "pdq" / "images"


def source_photos() -> list[Image.Image]:
    photos: list[Image.Image] = []
    try:
        from skimage import data

        for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left",
                     "immunohistochemistry", "hubble_deep_field"):
            loader = getattr(data, name, None)
            if loader is None and name == "motorcycle_left":
                photos.append(Image.fromarray(data.stereo_motorcycle()[0]))
                continue
            if loader is not None:
                photos.append(Image.fromarray(loader()).convert("RGB"))
    except ImportError:
        pass
    for rel in ("bridge-mods/aaa-orig.jpg", "reg-test-input/exif-rotn/exif-rotn-1.jpg",
                "reg-test-input/pen-and-coaster.png"):
        path = VECTORS / rel
        if path.exists():
            photos.append(Image.open(path).convert("RGB"))
    if not photos:
        sys.exit('bench: no photos: pip install -e ".[bench]" and/or put ../shared beside')
    return photos


def photo_bytes(rng: random.Random, photos: list[Image.Image]) -> bytes:
    img = rng.choice(photos)
    megapixels = rng.uniform(0.5, 1.5)
    scale = (megapixels * 1e6 / (img.width * img.height)) ** 0.5
    size = (max(64, int(img.width * scale)), max(64, int(img.height * scale)))
    buf = io.BytesIO()
    img.resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=rng.randint(75, 92))
    return buf.getvalue()


def build_mbox(path: Path, count: int, seed: int = 7) -> int:
    """Write the mbox; returns the number of photos in it."""
    rng = random.Random(seed)
    photos = source_photos()
    box = mailbox.mbox(str(path))
    images = 0
    for n in range(count):
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = f"sender{n % 37}@example.org"
        msg["To"] = "someone@example.net"
        msg["Subject"] = f"message {n}"
        msg["Message-ID"] = f"<bench-{n}@example.org>"
        msg.set_content("Hello,\n\n" + "Some ordinary text of a message body.\n" * 20)
        kind = rng.random()
        if kind < 0.50:
            pass
        elif kind < 0.75:
            msg.add_attachment(photo_bytes(rng, photos), maintype="image", subtype="jpeg",
                               filename="photo.jpg")
            images += 1
        elif kind < 0.90:
            for k in range(rng.randint(2, 4)):
                msg.add_attachment(photo_bytes(rng, photos), maintype="image",
                                   subtype="jpeg", filename=f"photo{k}.jpg")
                images += 1
        else:
            zipped = io.BytesIO()
            with zipfile.ZipFile(zipped, "w") as zf:
                for k in range(rng.randint(2, 3)):
                    zf.writestr(f"album/p{k}.jpg", photo_bytes(rng, photos))
                    images += 1
            msg.add_attachment(zipped.getvalue(), maintype="application", subtype="zip",
                               filename="album.zip")
        box.add(msg.as_bytes(policy=email.policy.SMTP))
    box.close()
    return images


def parse_only(path: Path) -> float:
    start = time.perf_counter()
    for message in mailbox.mbox(str(path), factory=None):
        parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
        for part in parsed.walk():
            part.get_payload(decode=True)
    return time.perf_counter() - start


def reference_pdq(path: Path) -> tuple[float, int]:
    try:
        import pdqhash
    except ImportError:
        return float("nan"), 0
    blobs: list[bytes] = []
    for message in mailbox.mbox(str(path)):
        for part in message.walk():
            if part.get_content_type() == "image/jpeg":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    blobs.append(payload)
            elif part.get_content_type() == "application/zip":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
                        blobs.extend(zf.read(n) for n in zf.namelist())
    start = time.perf_counter()
    for blob in blobs:
        pdqhash.compute(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    return time.perf_counter() - start, len(blobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mf-scan-bench-") as tmp:
        tmpdir = Path(tmp)
        mbox = tmpdir / "bench.mbox"
        started = time.perf_counter()
        images = build_mbox(mbox, args.messages)
        build_s = time.perf_counter() - started
        hashes = tmpdir / "list.hma"
        hashes.write_text("md5 " + "0" * 31 + "1\n")

        env = {**os.environ, "MAILFILTER_STORE__PATH": str(tmpdir / "state")}
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "mailfilter", "scan", "--json", "--hashes", str(hashes),
             str(mbox)], capture_output=True, text=True, env=env, check=False,
        )
        scan_s = time.perf_counter() - started
        if out.returncode not in (0, 1):
            sys.exit(f"bench: scan failed ({out.returncode}): {out.stderr[-2000:]}")
        records = [json.loads(line) for line in out.stdout.splitlines()]
        found = sum(1 for r in records for a in r["attachments"]
                    if a.get("kind", "image") == "image")  # (other files are listed too)
        parse_s = parse_only(mbox)
        ref_s, ref_images = reference_pdq(mbox)

    result = {
        "messages": len(records), "images_in_mbox": images, "images_found": found,
        "mbox_build_s": round(build_s, 1), "scan_s": round(scan_s, 2),
        "scan_messages_per_s": len(records) / scan_s, "scan_images_per_s": found / scan_s,
        "parse_only_messages_per_s": len(records) / parse_s,
        "reference_pdq_images_per_s": ref_images / ref_s if ref_images else None,
        "cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    ref = result["reference_pdq_images_per_s"]
    print(f"| measure ({result['messages']} messages, {found} of {images} photos found) "
          "| figure |")
    print("|---|---:|")
    print(f"| `mailfilter scan`, {result['cores']} cores: messages/s | "
          f"{result['scan_messages_per_s']:.0f} |")
    print(f"| `mailfilter scan`, {result['cores']} cores: images/s | "
          f"{result['scan_images_per_s']:.0f} |")
    print(f"| baseline: parse only (stdlib email, 1 core): messages/s | "
          f"{result['parse_only_messages_per_s']:.0f} |")
    if ref:
        print(f"| baseline: reference C++ PDQ on full decode (1 core): images/s | {ref:.0f} |")
        print(f"| ratio: our images/s ÷ reference PDQ images/s | "
              f"{result['scan_images_per_s'] / ref:.1f}× |")


if __name__ == "__main__":
    main()
