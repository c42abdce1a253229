"""Assemble the benign real-photo set of the PDQ fidelity bench: JPEG photos copied out of git
snapshots of public repositories into one flat directory, and ORIGIN.md (repository, commit,
licence and count per source).

The photos are not committed (they are other people's pictures; the benches say so and stop
without them). Whoever has the snapshots (the `fetch` tool of the workplace library puts them
under /work/.mirror/OWNER+NAME/repo) runs

    python bench/photos/gather_photos.py --mirrors /work/.mirror --out bench/photos/images

Only benign photos: ImageNet's animal classes (synsets n01* and n02*, the first 398 classes:
fish, birds, reptiles, dogs, cats, insects, ...), and the camera sample photos of two EXIF
libraries (landscapes, objects, buildings, test shots). Files of 4 MiB and more are not in
the snapshots and so are missing; files Pillow cannot open, or whose short side is under
`--min-side`, are left out; byte-identical files are kept once.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class Source:
    repo: str  # owner/name
    licence: str
    include: tuple[str, ...]  # fnmatch patterns over paths in the repository
    prefix: str  # of the copied files' names
    note: str = ""


SOURCES: tuple[Source, ...] = (
    Source("EliSchwartz/imagenet-sample-images",
           "ImageNet sample images (one per class): each photo its Flickr owner's, "
           "ImageNet terms (non-commercial research)",
           ("n01*.JPEG", "n02[0-5]*.JPEG", "n02[6][0-8]*.JPEG"), "imagenet",
           "animal classes only (n01*, n02000000-n02689999)"),
    Source("drewnoakes/metadata-extractor-images",
           "'You are free to use these media files however you wish' (README)",
           ("jpg/*.jpg", "jpg/*.JPG", "jpg/*.jpeg"), "mei",
           "camera sample photos of metadata-extractor; files >= 4 MiB absent from the snapshot"),
    Source("ianare/exif-samples", "CC BY-SA 4.0 (README)",
           ("jpg/*.jpg", "jpg/*.JPG", "jpg/*/*.jpg", "jpg/*/*.JPG"), "exif",
           "camera sample photos of exif-py's predecessor; files >= 4 MiB absent"),
)


def _git(repo: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", "--git-dir", str(repo), *args], input=data,
                          capture_output=True, check=True).stdout


def _blobs(repo: Path, patterns: tuple[str, ...]) -> list[tuple[str, str]]:
    listing = _git(repo, "ls-tree", "-r", "-z", "HEAD").split(b"\0")
    out = []
    for entry in listing:
        if not entry:
            continue
        meta, path = entry.decode("utf-8", "replace").split("\t", 1)
        _, kind, sha = meta.split()
        if kind == "blob" and any(fnmatch.fnmatchcase(path, p) for p in patterns):
            out.append((path, sha))
    return sorted(out)


def _read(repo: Path, sha: str) -> bytes | None:
    try:
        return _git(repo, "cat-file", "blob", sha)
    except subprocess.CalledProcessError:
        return None  # a large file the snapshot lacks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    ap.add_argument("--min-side", type=int, default=200)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    rows = []
    for src in SOURCES:
        repo = args.mirrors / src.repo.replace("/", "+") / "repo"
        if not repo.is_dir():
            print(f"missing snapshot: {src.repo} (fetch it first)", file=sys.stderr)
            rows.append((src, "-", 0, 0))
            continue
        commit = _git(repo, "rev-parse", "HEAD").decode().strip()
        kept = absent = 0
        for path, sha in _blobs(repo, src.include):
            data = _read(repo, sha)
            if data is None:
                absent += 1
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    if im.format not in ("JPEG", "MPO") or min(im.size) < args.min_side:
                        continue
                    im.load()
            except Exception:
                continue
            seen.add(digest)
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)
            (args.out / f"{src.prefix}__{name}.jpg").write_bytes(data)
            kept += 1
        rows.append((src, commit[:12], kept, absent))
    lines = [
        "# Where the fidelity photos come from", "",
        "Benign real photos gathered by `gather_photos.py` from git snapshots of the",
        "repositories below (not committed here; each photo is its owner's, under the",
        "licence given).", "",
        "| repository | commit | licence | photos | absent (>= 4 MiB) | note |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {s.repo} | {c} | {s.licence} | {k} | {a} | {s.note} |" for s, c, k, a in rows]
    (Path(__file__).parent / "ORIGIN.md").write_text("\n".join(lines) + "\n")
    print(f"{sum(r[2] for r in rows)} photos in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
