"""Containers that used to scan clean although unarchivers show the photo inside (issue 15):
ISO 9660, CAB, cpio, xar, `.tar.Z` / `.tar.lz` / `.tar.lz4` / `.tar.zst`, Deflate64 zips, zip
entries missing from the central directory, OpenPGP literal data, and TNEF whose RTF body holds
the picture. Each is built with the real tool where one exists (skipped, with the reason, when
it is not installed; CI installs them), attached to a message, and must give back the photo's
exact bytes; each format also gets a bomb that must stay within the limits and be reported."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import extract_corpus as ec
import pytest
from factories import jpeg

from mailfilter.extract import extract, tnef
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()
PHOTO = jpeg(15)


def attached(
    data: bytes, name: str | None, limits: ExtractSettings = LIMITS,
    ctype: str = "application/octet-stream",
) -> Extraction:
    raw = ec.message(ec.multipart("mixed", [ec.part("text/plain", b"see attached\n"),
                                            ec.attachment(ctype, data, name)], "mc"))
    return extract(raw, limits)


def photos(ex: Extraction) -> list[str]:
    return [a.mime_path for a in ex.attachments if a.data == PHOTO]


def reasons(ex: Extraction) -> set[str]:
    return {u.reason for u in ex.unscannable}


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (CI installs it)")


def run(cmd: list[str], cwd: Path, stdin: bytes | None = None) -> bytes:
    env = {**os.environ, "GNUPGHOME": str(cwd / "gnupg")}
    done = subprocess.run(cmd, cwd=cwd, input=stdin, env=env, capture_output=True)
    # compress exits with 2 when its output is not smaller than its input (a JPEG, say)
    if done.returncode and not (cmd[0] == "compress" and done.returncode == 2):
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return done.stdout


def photo_dir(tmp_path: Path, data: bytes = PHOTO, name: str = "photo.jpg") -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(data)
    return src


# --- ISO 9660, CAB, cpio, xar -------------------------------------------------------------


@needs("genisoimage")
def test_iso9660(tmp_path: Path) -> None:
    photo_dir(tmp_path)
    run(["genisoimage", "-quiet", "-J", "-R", "-o", "x.iso", "src"], tmp_path)
    ex = attached((tmp_path / "x.iso").read_bytes(), "x.iso")
    assert photos(ex) == ["2/x.iso/photo.jpg"]
    assert ex.attachments[0].containers == ("application/x-iso9660-image",)
    assert ex.unscannable == ()


@needs("genisoimage")
def test_iso9660_past_the_budget_is_reported(tmp_path: Path) -> None:
    photo_dir(tmp_path, b"\x00" * 3_000_000, "big.bin")
    run(["genisoimage", "-quiet", "-o", "x.iso", "src"], tmp_path)
    ex = attached((tmp_path / "x.iso").read_bytes(), "x.iso",
                  ExtractSettings(max_decoded_bytes=2_000_000))
    assert reasons(ex) == {"max-decoded-bytes"}


@needs("gcab")
def test_cab(tmp_path: Path) -> None:
    src = photo_dir(tmp_path)
    run(["gcab", "-c", "-z", "../x.cab", "photo.jpg"], src)
    ex = attached((tmp_path / "x.cab").read_bytes(), "x.cab")
    assert photos(ex) == ["2/x.cab/photo.jpg"]
    assert ex.attachments[0].containers == ("application/vnd.ms-cab-compressed",)


@needs("gcab")
def test_cab_bomb_is_reported(tmp_path: Path) -> None:
    src = photo_dir(tmp_path, b"\x00" * 20_000_000, "zeros.bin")
    run(["gcab", "-c", "-z", "../x.cab", "zeros.bin"], src)
    data = (tmp_path / "x.cab").read_bytes()
    assert len(data) * LIMITS.max_expansion_ratio < 20_000_000
    ex = attached(data, "x.cab")
    assert reasons(ex) == {"max-expansion-ratio"}
    assert ex.attachments == ()


@needs("cpio")
@pytest.mark.parametrize("fmt", ["newc", "odc", "crc", "bin"])
def test_cpio(tmp_path: Path, fmt: str) -> None:
    src = photo_dir(tmp_path)
    archive = run(["cpio", "--quiet", "-o", "-H", fmt], src, b"photo.jpg\n")
    ex = attached(archive, None)
    assert photos(ex) == ["2/photo.jpg"]
    assert ex.attachments[0].containers == ("application/x-cpio",)


@needs("cpio")
def test_cpio_truncated_and_past_the_budget(tmp_path: Path) -> None:
    src = photo_dir(tmp_path)
    archive = run(["cpio", "--quiet", "-o", "-H", "newc"], src, b"photo.jpg\n")
    assert reasons(attached(archive[: len(archive) // 2], "x.cpio")) == {"corrupt-archive"}
    small = ExtractSettings(max_decoded_bytes=len(PHOTO) // 2)
    assert reasons(attached(archive, "x.cpio", small)) == {"max-decoded-bytes"}


def xar(files: dict[str, bytes], *, gzip: bool = False, declared: int | None = None) -> bytes:
    """A minimal xar (no xar tool in Debian): header, zlib-compressed TOC, heap; no
    checksums. `gzip`: members zlib-compressed ("application/x-gzip" encoding)."""
    heap, entries = b"", ""
    for n, (name, data) in enumerate(files.items(), 1):
        stored = zlib.compress(data, 9) if gzip else data
        style = "application/x-gzip" if gzip else "application/octet-stream"
        size = len(data) if declared is None else declared
        entries += (f'<file id="{n}"><name>{name}</name><type>file</type><data>'
                    f"<length>{len(stored)}</length><offset>{len(heap)}</offset>"
                    f'<size>{size}</size><encoding style="{style}"/></data></file>')
        heap += stored
    toc = f'<?xml version="1.0" encoding="UTF-8"?><xar><toc>{entries}</toc></xar>'.encode()
    packed = zlib.compress(toc)
    return struct.pack(">4sHHQQI", b"xar!", 28, 1, len(packed), len(toc), 0) + packed + heap


@pytest.mark.parametrize("gzip", [False, True])
def test_xar(gzip: bool) -> None:
    ex = attached(xar({"photo.jpg": PHOTO}, gzip=gzip), "x.pkg")
    assert photos(ex) == ["2/x.pkg/photo.jpg"]
    assert ex.attachments[0].containers == ("application/x-xar",)


def test_xar_bombs_are_reported() -> None:
    zeros = b"\x00" * 30_000_000
    assert reasons(attached(xar({"z.bin": zeros}, gzip=True), "x.xar")) == {"max-expansion-ratio"}
    lying = attached(xar({"z.bin": zeros}, gzip=True, declared=1000), "x.xar")
    assert reasons(lying) & {"zip-bomb", "corrupt-archive"}
    assert lying.attachments == ()


# --- compressed tars: compress, lzip, lz4, zstd -----------------------------------------

_PACKERS = {
    "Z": (["compress", "-c"], "application/x-compress"),
    "lz": (["lzip", "-c"], "application/x-lzip"),
    "lz4": (["lz4", "-q", "-c"], "application/x-lz4"),
    "zst": (["zstd", "-q", "-c"], "application/zstd"),
    "lzma": (["xz", "--format=lzma", "-c"], "application/x-lzma"),
}


@pytest.mark.parametrize("ext", list(_PACKERS))
def test_compressed_tar(tmp_path: Path, ext: str) -> None:
    cmd, kind = _PACKERS[ext]
    if shutil.which(cmd[0]) is None or shutil.which("tar") is None:
        pytest.skip(f"needs {cmd[0]} and tar (CI installs them)")
    photo_dir(tmp_path)
    tar = run(["tar", "-cf", "-", "-C", "src", "photo.jpg"], tmp_path)
    ex = attached(run(cmd, tmp_path, tar), f"pics.tar.{ext}")
    assert photos(ex) == [f"2/pics.tar.{ext}/pics.tar/photo.jpg"]
    assert ex.attachments[0].containers == (kind, "application/x-tar")
    assert ex.unscannable == ()


@pytest.mark.parametrize("ext", list(_PACKERS))
def test_compressed_single_file_and_bomb(tmp_path: Path, ext: str) -> None:
    cmd, _kind = _PACKERS[ext]
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"needs {cmd[0]} (CI installs it)")
    ex = attached(run(cmd, tmp_path, PHOTO), None)
    assert photos(ex) == ["2/decompressed"]
    bomb = run(cmd, tmp_path, b"\x00" * 12_000_000)
    assert len(bomb) * LIMITS.max_expansion_ratio < 12_000_000
    ex = attached(bomb, f"zeros.{ext}")
    assert reasons(ex) == {"max-expansion-ratio"}


@pytest.mark.parametrize("head", [b"\x04\x22\x4d\x18", b"\x02\x21\x4c\x18", b"LZIP\x01\x0c",
                                  b"\x28\xb5\x2f\xfd"])
def test_stream_that_only_looks_compressed_is_corrupt(head: bytes) -> None:
    ex = attached(head + b"\x00" * 60, "x.bin")  # never handed back undecoded, to recurse on
    assert {(u.mime_path, u.reason) for u in ex.unscannable} == {("2/x.bin", "corrupt-archive")}


# --- 7z through libarchive (py7zr where libarchive lacks a method) ------------------------


@needs("7zz")
@pytest.mark.parametrize("options", [[], ["-m0=PPMd"], ["-m0=BZip2"], ["-mf=BCJ2"], ["-m0=Copy"],
                                     ["-mf=ARM64"]])
def test_7z_methods(tmp_path: Path, options: list[str]) -> None:
    photo_dir(tmp_path)
    run(["7zz", "a", *options, "x.7z", "./src/photo.jpg"], tmp_path)
    ex = attached((tmp_path / "x.7z").read_bytes(), "x.7z")
    assert photos(ex) == ["2/x.7z/photo.jpg"]
    assert ex.unscannable == ()


@needs("7zz")
@pytest.mark.parametrize(("options", "reason"), [
    (["-pX"], "encrypted-archive"),
    (["-pX", "-mhe=on"], "encrypted-archive"),
])
def test_7z_refused(tmp_path: Path, options: list[str], reason: str) -> None:
    photo_dir(tmp_path)
    run(["7zz", "a", *options, "x.7z", "./src/photo.jpg"], tmp_path)
    ex = attached((tmp_path / "x.7z").read_bytes(), "x.7z")
    assert reasons(ex) == {reason}


@needs("7zz")
def test_7z_bomb_is_reported(tmp_path: Path) -> None:
    photo_dir(tmp_path, b"\x00" * 12_000_000, "zeros.bin")
    run(["7zz", "a", "x.7z", "./src/zeros.bin"], tmp_path)
    ex = attached((tmp_path / "x.7z").read_bytes(), "x.7z")
    assert reasons(ex) == {"max-expansion-ratio"}
    assert ex.attachments == ()


# --- zip: Deflate64, entries outside the central directory --------------------------------


@needs("7zz")
def test_deflate64_zip(tmp_path: Path) -> None:
    photo_dir(tmp_path)
    run(["7zz", "a", "-tzip", "-mm=Deflate64", "x.zip", "./src/photo.jpg"], tmp_path)
    data = (tmp_path / "x.zip").read_bytes()
    assert zipfile.ZipFile(io.BytesIO(data)).infolist()[0].compress_type == 9
    ex = attached(data, "x.zip")
    assert photos(ex) == ["2/x.zip/photo.jpg"]
    assert ex.unscannable == ()


@needs("7zz")
def test_deflate64_bombs_are_reported(tmp_path: Path) -> None:
    photo_dir(tmp_path, b"\x00" * 12_000_000, "zeros.bin")
    run(["7zz", "a", "-tzip", "-mm=Deflate64", "x.zip", "./src/zeros.bin"], tmp_path)
    data = (tmp_path / "x.zip").read_bytes()
    assert reasons(attached(data, "x.zip")) == {"max-expansion-ratio"}
    # the same member declaring 1000 bytes: the read stops past them
    size = (12_000_000).to_bytes(4, "little")
    lying = data.replace(size, (1000).to_bytes(4, "little"))
    ex = attached(lying, "x.zip")
    assert reasons(ex) == {"zip-bomb"}
    assert ex.attachments == ()


@pytest.mark.parametrize("method", [93, 95])
def test_zip_zstd_and_xz_members(tmp_path: Path, method: int) -> None:
    import lzma

    if method == 93:
        if shutil.which("zstd") is None:
            pytest.skip("needs zstd (CI installs it)")
        packed = run(["zstd", "-q", "-c"], tmp_path, PHOTO)
    else:
        packed = lzma.compress(PHOTO, lzma.FORMAT_XZ)
    z = ec.raw_zip([("photo.jpg", packed, zlib.crc32(PHOTO), len(PHOTO), len(packed))], method)
    ex = attached(z, "x.zip")
    assert photos(ex) == ["2/x.zip/photo.jpg"]
    assert ex.unscannable == ()


def _drop_from_directory(data: bytes, keep: int) -> bytes:
    """The zip with only its first `keep` central directory entries."""
    eocd = data.rfind(b"PK\x05\x06")
    start = struct.unpack_from("<I", data, eocd + 16)[0]
    cut = start
    for _ in range(keep):
        nxt = data.find(b"PK\x01\x02", cut + 4)
        cut = nxt if 0 <= nxt < eocd else eocd
    directory = data[start:cut]
    end = bytearray(data[eocd:])
    struct.pack_into("<HHII", end, 8, keep, keep, len(directory), start)
    return data[:start] + directory + bytes(end)


@pytest.mark.parametrize(
    "method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
def test_zip_entry_missing_from_the_directory(method: int) -> None:
    other = jpeg(16)
    z = ec.zip_bytes({"listed.jpg": other, "hidden.jpg": PHOTO}, method)
    ex = attached(_drop_from_directory(z, 1), "x.zip")
    assert zipfile.ZipFile(io.BytesIO(_drop_from_directory(z, 1))).namelist() == ["listed.jpg"]
    assert photos(ex) == ["2/x.zip/hidden.jpg"]
    assert {a.mime_path for a in ex.attachments} == {"2/x.zip/listed.jpg", "2/x.zip/hidden.jpg"}
    assert any(d.startswith("zip-unlisted-entry") for d in ex.defects)
    assert ex.unscannable == ()


def test_stray_local_headers_beside_a_directory_are_not_unscannable() -> None:
    junk = b"PK\x03\x04" + bytes(range(26))  # chance bytes: method 0x0706
    stray = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, 0, 999_999, 999_999, 5, 0)
    z = junk + stray + b"x.jpg" + b"\x01\x02" + ec.zip_bytes({"photo.jpg": PHOTO})
    ex = attached(z, "x.zip")
    assert photos(ex) == ["2/x.zip/photo.jpg"]
    assert ex.unscannable == ()
    assert any(d.startswith("zip-unlisted-entry-unreadable") for d in ex.defects)


class _Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_streamed_zip_without_a_directory(method: int) -> None:
    out = _Unseekable()
    with zipfile.ZipFile(out, "w", compression=method) as zf:  # data descriptors
        with zf.open("first.jpg", "w") as f:
            f.write(jpeg(17))
        with zf.open("photo.jpg", "w") as f:
            f.write(PHOTO)
    data = bytes(out.data)
    ex = attached(data[: data.index(b"PK\x01\x02")], "x.zip")
    assert photos(ex) == ["2/x.zip/photo.jpg"]
    assert any(d.startswith("zip-without-directory") for d in ex.defects)


def test_unlisted_encrypted_entry_is_reported() -> None:
    z = ec.encrypted_flag_zip({"open.jpg": PHOTO, "locked.jpg": b"x" * 100}, only={"locked.jpg"})
    ex = attached(_drop_from_directory(z, 1), "x.zip")
    assert photos(ex) == ["2/x.zip/open.jpg"]
    assert reasons(ex) == {"encrypted-archive"}


def test_unlisted_zip_bomb_is_reported() -> None:
    z = ec.zip_bytes({"a.jpg": PHOTO, "zeros.bin": b"\x00" * 30_000_000})
    ex = attached(_drop_from_directory(z, 1), "x.zip")
    assert photos(ex) == ["2/x.zip/a.jpg"]
    assert reasons(ex) == {"max-expansion-ratio"}


# --- OpenPGP ------------------------------------------------------------------------------


@pytest.fixture
def gpg_home(tmp_path: Path) -> Iterator[Path]:
    """A scratch GNUPGHOME (tmp_path/gnupg); the gpg-agent it starts is stopped after."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    yield home
    if shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)},
                       capture_output=True, check=False)


def _gpg(tmp_path: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return run(["gpg", "--batch", "--quiet", "--no-tty", *args], tmp_path, stdin)


@needs("gpg")
@pytest.mark.usefixtures("gpg_home")
@pytest.mark.parametrize(
    "options", [[], ["-z", "0"], ["--compress-algo", "zlib"], ["--compress-algo", "bzip2"],
                ["--armor"]]
)
def test_gpg_store(tmp_path: Path, options: list[str]) -> None:
    photo_dir(tmp_path)
    _gpg(tmp_path, "--store", *options, "-o", "x.gpg", "src/photo.jpg")
    ex = attached((tmp_path / "x.gpg").read_bytes(), "x.gpg")
    assert photos(ex) == ["2/x.gpg/photo.jpg"]
    assert ex.attachments[0].containers == ("application/pgp-encrypted",)
    assert ex.unscannable == ()


@needs("gpg")
@pytest.mark.usefixtures("gpg_home")
def test_gpg_store_armored_inline_in_a_text_part(tmp_path: Path) -> None:
    photo_dir(tmp_path)
    armored = _gpg(tmp_path, "--store", "--armor", "-o", "-", "src/photo.jpg")
    raw = ec.message(ec.part("text/plain", armored))
    ex = extract(raw, LIMITS)
    assert [a.data == PHOTO for a in ex.attachments] == [True]


@needs("gpg")
@pytest.mark.usefixtures("gpg_home")
def test_gpg_symmetric_encryption_is_encrypted_message(tmp_path: Path) -> None:
    photo_dir(tmp_path)
    _gpg(tmp_path, "--symmetric", "--pinentry-mode", "loopback", "--passphrase", "secret",
         "--s2k-count", "65536", "-o", "x.gpg", "src/photo.jpg")
    ex = attached((tmp_path / "x.gpg").read_bytes(), "x.gpg")
    assert reasons(ex) == {"encrypted-message"}
    assert ex.attachments == ()


@needs("gpg")
@pytest.mark.usefixtures("gpg_home")
def test_gpg_signed_encrypted_and_a_key_with_a_photo_id(tmp_path: Path) -> None:
    photo_dir(tmp_path)
    _gpg(tmp_path, "--passphrase", "", "--quick-gen-key", "Test <t@example.org>",
         "future-default", "default", "never")
    _gpg(tmp_path, "--sign", "-o", "s.gpg", "src/photo.jpg")  # signed, not encrypted
    ex = attached((tmp_path / "s.gpg").read_bytes(), "s.gpg")
    assert photos(ex) == ["2/s.gpg/photo.jpg"]
    _gpg(tmp_path, "--encrypt", "-r", "t@example.org", "-o", "e.gpg", "src/photo.jpg")
    ex = attached((tmp_path / "e.gpg").read_bytes(), "e.gpg")
    assert reasons(ex) == {"encrypted-message"}
    assert ex.attachments == ()
    # a photo ID, as key managers show it: in an attached key, binary or armored
    _gpg(tmp_path, "--command-fd", "0", "--edit-key", "t@example.org",
         stdin=f"addphoto\n{tmp_path / 'src' / 'photo.jpg'}\ny\nsave\n".encode())
    for armor in ([], ["--armor"]):
        key = _gpg(tmp_path, "--export", *armor, "t@example.org")
        ex = attached(key, "key.asc", ctype="application/pgp-keys")
        assert photos(ex) == ["2/key.asc/photo-id-1.jpg"]


@needs("gpg")
@pytest.mark.usefixtures("gpg_home")
def test_gpg_compressed_bomb_is_reported(tmp_path: Path) -> None:
    photo_dir(tmp_path, b"\x00" * 30_000_000, "zeros.bin")
    _gpg(tmp_path, "--store", "-z", "9", "-o", "x.gpg", "src/zeros.bin")
    data = (tmp_path / "x.gpg").read_bytes()
    assert len(data) * LIMITS.max_expansion_ratio < 30_000_000
    assert reasons(attached(data, "x.gpg")) == {"max-expansion-ratio"}


def test_openpgp_partial_body_lengths() -> None:
    body = b"b" + bytes([9]) + b"photo.jpg" + b"\x00" * 4 + PHOTO
    packet = bytes([0xC0 | 11])
    pos = 0
    while len(body) - pos > 512:  # 512-byte partial chunks, then a final definite length
        packet += bytes([224 + 9]) + body[pos : pos + 512]
        pos += 512
    rest = body[pos:]
    if len(rest) < 192:
        packet += bytes([len(rest)]) + rest
    else:
        assert len(rest) < 8384
        packet += bytes([((len(rest) - 192) >> 8) + 192, (len(rest) - 192) & 0xFF]) + rest
    assert photos(attached(packet, None)) == ["2/photo.jpg"]


# --- TNEF with an RTF body ----------------------------------------------------------------


def lzfu(rtf: bytes) -> bytes:
    """Compressed RTF (MS-OXRTFCP) made of literal runs only, with its end marker."""
    out = bytearray()
    write = len(tnef._RTF_PREBUF)
    for at in range(0, len(rtf), 8):
        run_ = rtf[at : at + 8]
        out += b"\x00" + run_
        write = (write + len(run_)) & 0xFFF
    if len(rtf) % 8:
        out[-(len(rtf) % 8) - 1] |= 1 << (len(rtf) % 8)
    else:
        out.append(1)
    out += struct.pack(">H", write << 4)
    crc = zlib.crc32(bytes(out), 0xFFFFFFFF) ^ 0xFFFFFFFF  # CRC-32 without the inversions
    return struct.pack("<IIII", len(out) + 12, len(rtf), 0x75465A4C, crc) + bytes(out)


def tnef_with_rtf(rtf_compressed: bytes) -> bytes:
    prop = struct.pack("<HHII", 0x0102, 0x1009, 1, len(rtf_compressed)) + rtf_compressed
    prop += b"\x00" * (-len(rtf_compressed) % 4)
    return (struct.pack("<IH", 0x223E9F78, 1)
            + ec.tnef_attr(1, 0x00089006, struct.pack("<I", 0x00010000))
            + ec.tnef_attr(1, 0x00069003, struct.pack("<I", 1) + prop))


def test_lzfu_example_from_the_specification() -> None:
    compressed = bytes.fromhex(
        "2d0000002b0000004c5a4675f1c5c7a703000a007263706731323542320af32068656c09002062"
        "7705b06c647d0a800fa0"
    )
    assert tnef.decompress_rtf(compressed, 1 << 20) == (
        b"{\\rtf1\\ansi\\ansicpg1252\\pard hello world}\r\n"
    )


@pytest.mark.parametrize("reference", [False, True])
def test_tnef_rtf_body_is_handed_on(tmp_path: Path, reference: bool) -> None:
    rtf = b"{\\rtf1\\ansi see {\\pict\\jpegblip " + PHOTO.hex().encode() + b"}}\r\n"
    data = tnef_with_rtf(lzfu(rtf))
    if reference:  # the tnef program reads the same body out of it
        if shutil.which("tnef") is None:
            pytest.skip("needs tnef (CI installs it)")
        (tmp_path / "winmail.dat").write_bytes(data)
        run(["tnef", "--save-body=body", "--body-pref=R", "-f", "winmail.dat"], tmp_path)
        assert (tmp_path / "body.rtf").read_bytes() == rtf
    ex = attached(data, "winmail.dat", ctype="application/ms-tnef")
    assert ex.unscannable == ()
    # the body goes on to the text scan as text/rtf (finding the \pict there is its job)
    assert _tnef_children(data) == [("body.rtf", "text/rtf", rtf)]


def _tnef_children(data: bytes, limits: ExtractSettings = LIMITS) -> list[tuple[str, str, bytes]]:
    from mailfilter.extract import core

    ctx = core.Context(limits)
    node = core.PayloadNode("2/winmail.dat", (), data, "winmail.dat", "application/ms-tnef")
    children = [c for c in tnef.attachments(ctx, node) if isinstance(c, core.PayloadNode)]
    return [(c.filename or "", c.content_type or "", c.data) for c in children]


def test_tnef_html_body_with_a_data_uri() -> None:
    import base64

    html = b'<html><body><img src="data:image/jpeg;base64,' + base64.b64encode(PHOTO) + b'">'
    prop = struct.pack("<HHII", 0x0102, 0x1013, 1, len(html)) + html + b"\x00" * (-len(html) % 4)
    data = (struct.pack("<IH", 0x223E9F78, 1)
            + ec.tnef_attr(1, 0x00069003, struct.pack("<I", 1) + prop))
    assert _tnef_children(data) == [("body.html", "text/html", html)]
    ex = attached(data, "winmail.dat", ctype="application/ms-tnef")
    assert len(photos(ex)) == 1


def test_tnef_rtf_bomb_stays_within_the_budget() -> None:
    # back references of 17 bytes for 2 (a control byte per 8): a declared 100 MB body
    refs = bytearray()
    write = len(tnef._RTF_PREBUF)
    for _ in range(20_000):
        refs.append(0xFF)
        for _ref in range(8):
            refs += struct.pack(">H", (((write + 2048) & 0xFFF) << 4) | 0xF)
            write = (write + 17) & 0xFFF
    compressed = struct.pack("<IIII", len(refs) + 12, 100_000_000, 0x75465A4C, 0) + refs
    assert len(tnef.decompress_rtf(compressed, 1_000_000)) == 1_000_000
    small = ExtractSettings(max_decoded_bytes=1_000_000)
    ex = attached(tnef_with_rtf(compressed), "winmail.dat", small)
    assert {(u.mime_path, u.reason) for u in ex.unscannable} == {
        ("2/winmail.dat/body.rtf", "max-decoded-bytes")
    }
    [(name, _ctype, body)] = _tnef_children(tnef_with_rtf(compressed), small)
    assert name == "body.rtf"
    assert len(body) <= 1_000_000


# --- sniffing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x00" * 0x8001 + b"CD001\x01" + b"\x00" * 100, "application/x-iso9660-image"),
        (b"MSCF\x00\x00\x00\x00" + b"\x00" * 40, "application/vnd.ms-cab-compressed"),
        (b"xar!\x00\x1c\x00\x01" + b"\x00" * 40, "application/x-xar"),
        (b"\x1f\x9d\x90" + b"\x00" * 40, "application/x-compress"),
        (b"LZIP\x01\x0c" + b"\x00" * 40, "application/x-lzip"),
        (b"\x04\x22\x4d\x18" + b"\x00" * 40, "application/x-lz4"),
        (b"\x5d\x00\x00\x80\x00" + b"\xff" * 8 + b"\x00" * 40, "application/x-lzma"),
        (b"-----BEGIN PGP MESSAGE-----\n\nabc\n", "application/pgp-encrypted"),
    ],
)
def test_sniffed(data: bytes, kind: str) -> None:
    from mailfilter.extract import sniff

    assert sniff.container_type(data) == kind


def test_random_bytes_with_a_pgp_like_first_byte_are_not_openpgp() -> None:
    from mailfilter.extract import sniff

    sniffed: Callable[[bytes], str | None] = sniff.container_type
    assert sniffed(b"\xac\xff" + b"\x00" * 300) is None  # literal data longer than the data
    assert sniffed(b"\xa8\x05\x07abcd" + b"\x00" * 30) is None  # no compression algorithm 7
