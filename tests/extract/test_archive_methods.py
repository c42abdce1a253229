"""Archive methods read by our own code around a library: zip members compressed with PPMd
(method 98, through pyppmd) and 7z folders with the ARM64 branch filter (our decoder, on top
of py7zr's). Archives are built with the real 7-Zip (`7zz`; skipped when it is missing, CI
installs it) and what we decode is held against what `7zz x` gives back."""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import extract_corpus as ec
import pytest
from factories import jpeg

from mailfilter.extract import extract
from mailfilter.extract._py7zr_io import Arm64Folder, arm64_decode
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

PHOTO = jpeg(15)
OTHER = jpeg(16)

pytestmark = pytest.mark.skipif(shutil.which("7zz") is None, reason="needs 7zz (CI installs it)")


def attached(data: bytes, name: str) -> Extraction:
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"see attached\n"),
                                            ec.attachment("application/octet-stream", data,
                                                          name)], "am"))
    return extract(raw, ExtractSettings())


def photos(ex: Extraction) -> list[str]:
    return sorted(a.mime_path for a in ex.attachments if a.data in (PHOTO, OTHER))


def reasons(ex: Extraction) -> set[str]:
    return {u.reason for u in ex.unscannable}


def sevenzip(tmp_path: Path, options: list[str], files: dict[str, bytes], name: str) -> bytes:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for file, data in files.items():
        (src / file).write_bytes(data)
    out = tmp_path / name
    out.unlink(missing_ok=True)
    subprocess.run(["7zz", "a", *options, str(out), *files], cwd=src, check=True,
                   capture_output=True)
    return out.read_bytes()


def machine_code(words: int, seed: int) -> bytes:
    """Little-endian words of which many are BL and ADRP instructions (what the filter
    converts), the rest random; the length is not a multiple of 4."""
    rng = random.Random(seed)
    out = []
    for _ in range(words):
        pick = rng.random()
        if pick < 0.3:
            out.append(0x94000000 | rng.getrandbits(26))
        elif pick < 0.6:
            out.append(0x90000000 | rng.getrandbits(2) << 29 | rng.getrandbits(19) << 5
                       | rng.getrandbits(5))
        else:
            out.append(rng.getrandbits(32))
    return struct.pack(f"<{words}I", *out) + b"\x01\x02\x03"


def ppmd_header(data: bytes) -> tuple[int, int]:
    """Where the first member's PPMd parameters (2 bytes) are in a zip, and their value."""
    n, m = struct.unpack_from("<HH", data, 26)
    at = 30 + n + m
    return at, int.from_bytes(data[at : at + 2], "little")


# --- zip PPMd -----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [[], ["-mx=9"], ["-mo=2", "-mmem=16m"], ["-mo=16"]])
def test_zip_ppmd_members(tmp_path: Path, options: list[str]) -> None:
    data = sevenzip(tmp_path, ["-tzip", "-mm=PPMd", *options],
                    {"photo.jpg": PHOTO, "other.jpg": OTHER}, "x.zip")
    assert {i.compress_type for i in zipfile.ZipFile(io.BytesIO(data)).infolist()} == {98}
    ex = attached(data, "x.zip")
    assert photos(ex) == ["2/x.zip/other.jpg", "2/x.zip/photo.jpg"]
    assert ex.unscannable == ()


def test_zip_ppmd_without_directory_is_walked(tmp_path: Path) -> None:
    data = sevenzip(tmp_path, ["-tzip", "-mm=PPMd"], {"photo.jpg": PHOTO, "other.jpg": OTHER},
                    "x.zip")
    ex = attached(data[: data.find(b"PK\x01\x02")], "x.zip")
    assert photos(ex) == ["2/x.zip/other.jpg", "2/x.zip/photo.jpg"]
    assert any(d.startswith("zip-without-directory") for d in ex.defects)


def test_zip_ppmd_cut_short_or_corrupt_is_unscannable(tmp_path: Path) -> None:
    data = sevenzip(tmp_path, ["-tzip", "-mm=PPMd"], {"photo.jpg": PHOTO}, "x.zip")
    at, params = ppmd_header(data)
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    # the member's bytes zeroed from half way: the stream ends before the declared size
    cut = at + info.compress_size // 2
    zeroed = data[:cut] + bytes(info.compress_size // 2) + data[at + info.compress_size :]
    bad_order = bytearray(data)
    bad_order[at : at + 2] = (params & ~0xF).to_bytes(2, "little")  # order 1
    freeze = bytearray(data)
    freeze[at : at + 2] = (params & 0x0FFF | 0x2000).to_bytes(2, "little")  # restore 2
    for broken in (zeroed, bytes(bad_order), bytes(freeze)):
        ex = attached(broken, "x.zip")
        assert reasons(ex) == {"corrupt-archive"}
        assert photos(ex) == []


def test_zip_ppmd_claiming_the_largest_model_is_quick(tmp_path: Path) -> None:
    """A header claiming 256 MiB of model before garbage: memory is only touched as the model
    grows, so this costs nothing much."""
    data = sevenzip(tmp_path, ["-tzip", "-mm=PPMd"], {"photo.jpg": PHOTO}, "x.zip")
    at, _params = ppmd_header(data)
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    hostile = bytearray(data)
    hostile[at : at + 2] = (0xF | 0xFF << 4).to_bytes(2, "little")
    hostile[at + 2 : at + info.compress_size] = random.Random(5).randbytes(
        info.compress_size - 2)
    ex = attached(bytes(hostile), "x.zip")
    # garbage may decode to something of the declared size: kept with a bad CRC, as unzip does
    assert reasons(ex) == {"corrupt-archive"} or any(
        d.startswith("zip-bad-crc") for d in ex.defects)
    assert photos(ex) == []


def test_zip_ppmd_bombs_are_reported(tmp_path: Path) -> None:
    data = sevenzip(tmp_path, ["-tzip", "-mm=PPMd"], {"zeros.bin": bytes(12_000_000)}, "x.zip")
    assert reasons(attached(data, "x.zip")) == {"max-expansion-ratio"}
    # the same member declaring 1000 bytes: the read stops past them
    lying = data.replace((12_000_000).to_bytes(4, "little"), (1000).to_bytes(4, "little"))
    ex = attached(lying, "x.zip")
    assert reasons(ex) == {"zip-bomb"}
    assert ex.attachments == ()
    # and without a directory, through the local header alone
    ex = attached(lying[: lying.find(b"PK\x01\x02")], "x.zip")
    assert "zip-bomb" in reasons(ex)
    assert ex.attachments == ()


# --- 7z ARM64 -------------------------------------------------------------------------------


def test_arm64_decode_undoes_7zip(tmp_path: Path) -> None:
    """With Copy below the filter the packed stream is 7-Zip's filter output itself."""
    code = machine_code(100_000, 1)
    data = sevenzip(tmp_path, ["-mf=ARM64", "-m0=Copy", "-mhc=off"], {"code.bin": code},
                    "x.7z")
    encoded = data[32 : 32 + len(code)]
    assert sum(a != b for a, b in zip(encoded, code, strict=True)) > len(code) // 10
    assert arm64_decode(encoded) == code
    # in pieces at word boundaries, each at its own stream offset
    assert arm64_decode(encoded[:4000]) + arm64_decode(encoded[4000:], 4000) == code


@pytest.mark.parametrize("options", [["-mf=ARM64"], ["-mf=ARM64", "-m0=LZMA"],
                                     ["-mf=ARM64", "-m0=PPMd"], ["-mf=ARM64", "-ms=off"]])
def test_7z_arm64_matches_7zip(tmp_path: Path, options: list[str]) -> None:
    """Every member, solid or not, of odd sizes (so words straddle members), comes out as
    `7zz x` gives it."""
    import py7zr

    from mailfilter.extract._py7zr_io import CappedFactory, add_arm64_decoders

    files = {"a.bin": machine_code(251, 2), "photo.jpg": PHOTO, "b.bin": machine_code(80_001, 3)}
    data = sevenzip(tmp_path, options, files, "x.7z")
    subprocess.run(["7zz", "x", "-oout", "x.7z"], cwd=tmp_path, check=True, capture_output=True)
    with py7zr.SevenZipFile(io.BytesIO(data)) as archive:
        factory = CappedFactory({f.filename: f.uncompressed for f in archive.list()})
        add_arm64_decoders(archive)
        archive.extract(factory=factory)
    for name in files:
        assert factory.data(name) == (tmp_path / "out" / name).read_bytes() == files[name]
    ex = attached(data, "x.7z")
    assert photos(ex) == ["2/x.7z/photo.jpg"]
    assert ex.unscannable == ()


def test_7z_arm64_cut_short_is_unscannable(tmp_path: Path) -> None:
    data = sevenzip(tmp_path, ["-mf=ARM64"], {"b.bin": machine_code(80_001, 4),
                                              "photo.jpg": PHOTO}, "x.7z")
    (packed,) = struct.unpack_from("<Q", data, 12)  # next header offset: the packed end
    zeroed = data[:32 + packed // 2] + bytes(packed - packed // 2) + data[32 + packed :]
    ex = attached(zeroed, "x.7z")
    assert "corrupt-archive" in reasons(ex)
    assert photos(ex) == []


def test_7z_arm64_bomb_is_reported(tmp_path: Path) -> None:
    data = sevenzip(tmp_path, ["-mf=ARM64"], {"zeros.bin": bytes(12_000_000)}, "x.7z")
    ex = attached(data, "x.7z")
    assert reasons(ex) == {"max-expansion-ratio"}
    assert ex.attachments == ()


class _Inner:
    """A decompressor below the filter that gives more than the folder declares."""

    def decompress(self, fp: io.BytesIO, max_length: int = -1) -> bytes:
        fp.read(1)
        return b"\x00" * 64


def test_arm64_folder_refuses_more_than_declared() -> None:
    folder = Arm64Folder(_Inner(), 100, 0, None)
    fp = io.BytesIO(b"x" * 10)
    assert folder.decompress(fp, 64) == b"\x00" * 64
    with pytest.raises(ValueError, match="past its declared size"):
        folder.decompress(fp, 64)
