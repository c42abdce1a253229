"""Constructions of the differential suite: one benign generated photo, carried to the
recipient in every way we know that some mail client, unarchiver or viewer shows it.

Each construction is registered by name (`name[variant]` for variants) with the classes of
issue 15 it belongs to (control, headers, encodings, html, containers, partial-scans,
viewer, images, limits) and a builder that returns the raw message. A construction with a
`limit` (a password, a count or size limit) may also end `unscannable`; all others must
`match`. Builders run lazily (some call real programs: genisoimage, gcab, gpg, 7-Zip, lzip,
...); a builder whose tool is missing raises `Unavailable` and the construction is skipped
with that reason (CI installs them all).

Many constructions glue the photo's container inside another, or draw it in a way that no
stored image resembles: the attacker is assumed to cooperate with the recipient, who opens
the file with whichever program shows it (that is what the references model).

Everything is generated here from `factories.jpeg(PHOTO_SEED)`: no fixture files.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import io
import itertools
import quopri
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import urllib.parse
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from factories import image_bytes, jpeg, photo_like
from PIL import Image, ImageOps

PHOTO_SEED = 1515
CRLF = b"\r\n"


class Unavailable(Exception):
    """A tool needed to build the construction is not installed."""


@dataclass(frozen=True)
class Construction:
    name: str
    classes: tuple[str, ...]
    build: Callable[[], bytes]
    # A documented limit (encryption, password): the expected verdict is "unscannable".
    limit: str | None = None


REGISTRY: dict[str, Construction] = {}


def _register(name: str, classes: tuple[str, ...], build: Callable[[], bytes],
              limit: str | None = None) -> None:
    if name in REGISTRY:
        raise ValueError(f"construction {name!r} registered twice")
    REGISTRY[name] = Construction(name, classes, build, limit)


def construction(name: str, *classes: str, variants: Sequence[str] | None = None,
                 limit: str | None = None) -> Callable[[Callable[..., bytes]],
                                                       Callable[..., bytes]]:
    """Register a builder; with `variants`, one construction per variant (`name[variant]`),
    the variant passed as the builder's only argument."""
    def deco(fn: Callable[..., bytes]) -> Callable[..., bytes]:
        if variants is None:
            _register(name, classes, fn, limit)
        else:
            for v in variants:
                _register(f"{name}[{v}]", classes, functools.partial(fn, v), limit)
        return fn
    return deco


# ----------------------------------------------------------------------------- material


@functools.cache
def photo() -> bytes:
    """The known photo: what every construction carries, and what the hash list holds."""
    return jpeg(PHOTO_SEED)


@functools.cache
def _decoded_photo() -> Image.Image:
    img = Image.open(io.BytesIO(photo())).convert("RGB")
    img.info = {}  # JFIF details would go into other formats' headers (TIFF: as bad tags)
    return img


def photo_image() -> Image.Image:
    """A fresh copy each time: saving leaves encoder state on an image object."""
    return _decoded_photo().copy()


def decoy(seed: int, width: int = 640, height: int = 480) -> Image.Image:
    return photo_like(seed, width, height)


def noise_image(seed: int, width: int = 640, height: int = 480) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def run_tool(args: list[str], cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    if shutil.which(args[0]) is None:
        raise Unavailable(f"{args[0]} is not installed")
    proc = subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, timeout=60,
                          check=False)
    # compress(1) exits 2 when the output is not smaller than the input: still written.
    if proc.returncode != 0 and not (args[0] == "compress" and proc.returncode == 2):
        raise RuntimeError(f"{args} failed: {proc.stderr[-500:]!r}")
    return proc.stdout


def sevenz() -> str:
    """7-Zip's command: `7zz` (Debian's 7zip package) or `7z` (p7zip, other systems)."""
    for name in ("7zz", "7z"):
        if shutil.which(name):
            return name
    raise Unavailable("7-Zip is not installed")


def in_tempdir(files: dict[str, bytes], command: list[str], output: str,
               stdin: bytes | None = None) -> bytes:
    """Write `files` to a temp dir, run `command` there, return the file `output`."""
    with tempfile.TemporaryDirectory(prefix="mfdiff-") as tmp:
        d = Path(tmp)
        for name, data in files.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
        out = run_tool(command, cwd=d, stdin=stdin)
        if output == "-":
            return out
        return (d / output).read_bytes()


# ----------------------------------------------------------------------------- MIME

HEAD = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: differential\r\n"
        b"Date: Mon, 07 Dec 2026 00:00:00 +0000\r\nMessage-ID: <diff@test.example>\r\n")
MIME_VERSION = b"MIME-Version: 1.0\r\n"
TEXT = (b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
        b"\r\nSee the attachment.\r\n")


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", CRLF)


def part(ctype: bytes, body: bytes, *, cte: bytes | None = b"base64",
         extra: bytes = b"") -> bytes:
    head = b"Content-Type: " + ctype + CRLF
    if cte is not None:
        head += b"Content-Transfer-Encoding: " + cte + CRLF
    return head + extra + CRLF + body


def file_part(data: bytes, name: str, ctype: str = "application/octet-stream") -> bytes:
    n = name.encode()
    return part(ctype.encode() + b'; name="' + n + b'"', b64(data),
                extra=b'Content-Disposition: attachment; filename="' + n + b'"\r\n')


def multipart_body(boundary: bytes, parts: Iterable[bytes], *, close: bool = True,
                   preamble: bytes = b"This is a multi-part message.\r\n") -> bytes:
    out = preamble
    for p in parts:
        out += b"--" + boundary + CRLF + p + CRLF
    if close:
        out += b"--" + boundary + b"--" + CRLF
    return out


def message(top: bytes, body: bytes, *, head: bytes = HEAD + MIME_VERSION) -> bytes:
    """`top`: the entity headers of the message (each line ending in CRLF)."""
    return head + top + CRLF + body


def mixed(parts: Iterable[bytes], boundary: bytes = b"outer-b1") -> bytes:
    return message(b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n',
                   multipart_body(boundary, parts))


def attach(data: bytes, name: str, ctype: str = "application/octet-stream") -> bytes:
    return mixed([TEXT, file_part(data, name, ctype)])


def photo_part() -> bytes:
    return file_part(photo(), "photo.jpg", "image/jpeg")


# ----------------------------------------------------------------------------- controls


@construction("plain-attachment", "control")
def _plain() -> bytes:
    return mixed([TEXT, photo_part()])


@construction("inline-cid", "control")
def _inline_cid() -> bytes:
    html = part(b"text/html; charset=us-ascii",
                b'<html><body><img src="cid:photo@x"></body></html>\r\n', cte=b"7bit")
    img = part(b"image/jpeg", b64(photo()), extra=b"Content-ID: <photo@x>\r\n"
               b"Content-Disposition: inline\r\n")
    return message(b'Content-Type: multipart/related; boundary="rel"; type="text/html"\r\n',
                   multipart_body(b"rel", [html, img]))


@construction("zip", "control")
def _zip() -> bytes:
    return attach(zip_of({"photo.jpg": photo()}), "photos.zip", "application/zip")


@construction("single-part-image", "control")
def _single_part() -> bytes:
    return message(b"Content-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n",
                   b64(photo()))


@construction("forwarded-rfc822", "control")
def _forwarded() -> bytes:
    inner = mixed([TEXT, photo_part()], b"inner-b2")
    return mixed([TEXT, part(b"message/rfc822", inner, cte=None)])


@construction("alternative-related", "control")
def _alt_related() -> bytes:
    html = part(b"text/html", b'<p><img src="cid:p1"></p>\r\n', cte=b"7bit")
    img = part(b"image/jpeg", b64(photo()), extra=b"Content-ID: <p1>\r\n")
    related = (b'Content-Type: multipart/related; boundary="r2"\r\n\r\n'
               + multipart_body(b"r2", [html, img]))
    plain = part(b"text/plain", b"photo inside\r\n", cte=b"7bit")
    return message(b'Content-Type: multipart/alternative; boundary="a1"\r\n',
                   multipart_body(b"a1", [plain, related]))


# ----------------------------------------------------------------------------- headers


def _photo_body(boundary: bytes = b"B") -> bytes:
    return multipart_body(boundary, [TEXT, photo_part()])


@construction("header-block-over-256k", "headers")
def _big_header_block() -> bytes:
    filler = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"o" * 60) for i in range(4500))
    return message(filler + b'Content-Type: multipart/mixed; boundary="B"\r\n', _photo_body())


@construction("header-line-1mb", "headers")
def _one_mb_line() -> bytes:
    return message(b"X-Long: " + b"a" * (1024 * 1024) + CRLF
                   + b'Content-Type: multipart/mixed; boundary="B"\r\n', _photo_body())


@construction("header-line-1mb-folded", "headers")
def _one_mb_folded() -> bytes:
    folded = b"X-Long: " + b"\r\n ".join([b"a" * 70] * 15000) + CRLF
    return message(folded + b'Content-Type: multipart/mixed; boundary="B"\r\n', _photo_body())


@construction("two-content-types", "headers", variants=["plain-first", "multipart-first"])
def _two_ctypes(order: str) -> bytes:
    plain = b"Content-Type: text/plain\r\n"
    multi = b'Content-Type: multipart/mixed; boundary="B"\r\n'
    return message(plain + multi if order == "plain-first" else multi + plain, _photo_body())


@construction("duplicate-boundary", "headers", variants=["first-used", "second-used"])
def _dup_boundary(which: str) -> bytes:
    used = b"A" if which == "first-used" else b"B"
    return message(b'Content-Type: multipart/mixed; boundary="A"; boundary="B"\r\n',
                   _photo_body(used))


@construction("content-type-comments", "headers",
              variants=["before-type", "before-value", "after-value", "inside-type"])
def _ct_comments(where: str) -> bytes:
    line = {
        "before-type": b'Content-Type: (c) multipart/mixed; boundary="B"',
        "before-value": b'Content-Type: multipart/mixed; boundary=(c)"B"',
        "after-value": b'Content-Type: multipart/mixed (x); boundary="B" (y)',
        "inside-type": b'Content-Type: multipart/(c)mixed; boundary="B"',
    }[where]
    return message(line + CRLF, _photo_body())


@construction("header-line-without-colon", "headers",
              variants=["before-content-type", "space-before-colon"])
def _no_colon(variant: str) -> bytes:
    if variant == "before-content-type":
        top = (b"X-Ok: 1\r\nThis line has no colon\r\n"
               b'Content-Type: multipart/mixed; boundary="B"\r\n')
    else:
        top = b'Content-Type : multipart/mixed; boundary="B"\r\n'
    return message(top, _photo_body())


@construction("non-ascii-header-name", "headers")
def _non_ascii_name() -> bytes:
    return message('X-Grüße: hallo\r\n'.encode()
                   + b'Content-Type: multipart/mixed; boundary="B"\r\n', _photo_body())


@construction("two-cte-headers", "headers", variants=["7bit-then-base64", "base64-then-7bit"])
def _two_cte(order: str) -> bytes:
    ctes = [b"7bit", b"base64"] if order == "7bit-then-base64" else [b"base64", b"7bit"]
    img = (b'Content-Type: image/jpeg; name="photo.jpg"\r\n'
           + b"".join(b"Content-Transfer-Encoding: " + c + CRLF for c in ctes)
           + b'Content-Disposition: attachment; filename="photo.jpg"\r\n\r\n' + b64(photo()))
    return message(b'Content-Type: multipart/mixed; boundary="B"\r\n',
                   multipart_body(b"B", [TEXT, img]))


@construction("boundary-case", "headers",
              variants=["param-name-upper", "type-upper", "delimiter-other-case"])
def _boundary_case(variant: str) -> bytes:
    if variant == "param-name-upper":
        return message(b'Content-Type: multipart/mixed; BOUNDARY="Bnd"\r\n', _photo_body(b"Bnd"))
    if variant == "type-upper":
        return message(b'CONTENT-TYPE: MULTIPART/MIXED; boundary="Bnd"\r\n',
                       _photo_body(b"Bnd"))
    return message(b'Content-Type: multipart/mixed; boundary="Bnd"\r\n', _photo_body(b"BND"))


@construction("boundary-star", "headers",
              variants=["star-used", "plain-used", "continuation-only"])
def _boundary_star(variant: str) -> bytes:
    if variant == "continuation-only":
        return message(b'Content-Type: multipart/mixed; boundary*0="Bo"; boundary*1="und"\r\n',
                       _photo_body(b"Bound"))
    used = b"S" if variant == "star-used" else b"P"
    return message(b"Content-Type: multipart/mixed; boundary=\"P\"; boundary*=us-ascii''S\r\n",
                   _photo_body(used))


@construction("boundary-rfc2047", "headers", variants=["decoded-used", "literal-used"])
def _boundary_2047(variant: str) -> bytes:
    word = b"=?us-ascii?Q?Bnd?="
    used = b"Bnd" if variant == "decoded-used" else word
    return message(b'Content-Type: multipart/mixed; boundary="' + word + b'"\r\n',
                   _photo_body(used))


@construction("delimiter-trailing-junk", "headers",
              variants=["semicolon", "space-junk", "glued-junk", "trailing-whitespace"])
def _delim_junk(variant: str) -> bytes:
    suffix = {"semicolon": b";x", "space-junk": b" junk", "glued-junk": b"junk",
              "trailing-whitespace": b" \t"}[variant]
    body = b"preamble\r\n"
    for p in (TEXT, photo_part()):
        body += b"--B" + suffix + CRLF + p + CRLF
    body += b"--B--" + CRLF
    return message(b'Content-Type: multipart/mixed; boundary="B"\r\n', body)


@construction("line-ends", "headers", variants=["cr-only", "lf-only", "mixed-lf-crlf"])
def _line_ends(variant: str) -> bytes:
    raw = mixed([TEXT, photo_part()])
    if variant == "cr-only":
        return raw.replace(CRLF, b"\r")
    if variant == "lf-only":
        return raw.replace(CRLF, b"\n")
    lines = raw.split(CRLF)
    return b"".join(line + (b"\n" if i % 2 else CRLF) for i, line in enumerate(lines))


@construction("missing-mime-version", "headers")
def _no_mime_version() -> bytes:
    return message(b'Content-Type: multipart/mixed; boundary="B"\r\n', _photo_body(), head=HEAD)


@construction("content-type-folded", "headers", variants=["tab", "deep"])
def _ct_folded(variant: str) -> bytes:
    if variant == "tab":
        top = b'Content-Type: multipart/mixed;\r\n\tboundary="B"\r\n'
    else:
        top = b'Content-Type:\r\n multipart/mixed\r\n ;\r\n boundary\r\n =\r\n "B"\r\n'
    return message(top, _photo_body())


@construction("boundary-unquoted-special", "headers")
def _boundary_special() -> bytes:
    return message(b"Content-Type: multipart/mixed; boundary==_Part_1.2\r\n",
                   _photo_body(b"=_Part_1.2"))


@construction("cte-spelling", "headers", variants=["upper", "padded", "quoted"])
def _cte_spelling(variant: str) -> bytes:
    cte = {"upper": b"BASE64", "padded": b"  base64  ", "quoted": b'"base64"'}[variant]
    img = part(b'image/jpeg; name="photo.jpg"', b64(photo()), cte=cte)
    return mixed([TEXT, img])


@construction("unterminated-multipart", "headers")
def _unterminated() -> bytes:
    return message(b'Content-Type: multipart/mixed; boundary="B"\r\n',
                   multipart_body(b"B", [TEXT, photo_part()], close=False))


@construction("part-header-without-blank-line", "headers")
def _no_blank_after_part_headers() -> bytes:
    img = (b'Content-Type: image/jpeg; name="photo.jpg"\r\nContent-Transfer-Encoding: base64\r\n'
           + b64(photo()))
    return message(b'Content-Type: multipart/mixed; boundary="B"\r\n',
                   multipart_body(b"B", [TEXT, img]))


# ----------------------------------------------------------------------------- encodings


@construction("multipart-with-cte", "encodings", variants=["quoted-printable", "base64"])
def _multipart_cte(cte: str) -> bytes:
    return message(b'Content-Type: multipart/mixed; boundary="B"\r\n'
                   b"Content-Transfer-Encoding: " + cte.encode() + CRLF, _photo_body())


@construction("message-as-text-plain", "encodings")
def _message_as_text() -> bytes:
    inner = mixed([TEXT, photo_part()], b"inner-b2")
    return mixed([TEXT, part(b'text/plain; name="forward.eml"', inner, cte=b"7bit",
                             extra=b'Content-Disposition: attachment; filename="forward.eml"\r\n')])


@construction("eml-as-octet-stream", "encodings")
def _eml_octets() -> bytes:
    return attach(mixed([TEXT, photo_part()], b"inner-b2"), "forward.eml")


@construction("mbox", "encodings", variants=["no-blank-before-from", "normal"])
def _mbox(variant: str) -> bytes:
    first = message(b"Content-Type: text/plain\r\n", b"first message\r\n").replace(CRLF, b"\n")
    second = mixed([TEXT, photo_part()]).replace(CRLF, b"\n")
    sep = b"" if variant == "no-blank-before-from" else b"\n"
    return (b"From alice@example.org Mon Dec  7 00:00:00 2026\n" + first + sep
            + b"From alice@example.org Mon Dec  7 00:00:01 2026\n" + second)


def quoted_printable(data: bytes) -> bytes:
    """Binary-safe quoted-printable: CR and LF encoded too, soft breaks at 76 columns."""
    lines, line = [], b""
    for byte in data:
        token = bytes([byte]) if 33 <= byte <= 126 and byte != 61 else b"=%02X" % byte
        if len(line) + len(token) > 75:
            lines.append(line + b"=")
            line = b""
        line += token
    return CRLF.join([*lines, line]) + CRLF


@construction("quoted-printable-image", "encodings")
def _qp_image() -> bytes:
    body = quoted_printable(photo())
    return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"', body, cte=b"quoted-printable")])


def uuencode(data: bytes, name: str = "photo.jpg", mode: str = "644") -> bytes:
    lines = [f"begin {mode} {name}".encode()]
    for i in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[i:i + 45]).rstrip(b"\n"))
    lines += [b"`", b"end"]
    return CRLF.join(lines) + CRLF


@construction("uuencode-in-body", "encodings", variants=["plain", "mode-0644", "single-part"])
def _uu_body(variant: str) -> bytes:
    uu = uuencode(photo(), mode="0644" if variant == "mode-0644" else "644")
    text = b"Here it is:\r\n\r\n" + uu + b"\r\nbye\r\n"
    if variant == "single-part":
        return message(b"Content-Type: text/plain\r\n", text)
    return mixed([part(b"text/plain", text, cte=b"7bit")])


@construction("x-uuencode-cte", "encodings")
def _x_uue() -> bytes:
    return mixed([TEXT, part(b'application/octet-stream; name="photo.jpg"', uuencode(photo()),
                             cte=b"x-uuencode")])


@construction("base64-damaged", "encodings",
              variants=["junk-chars", "no-padding", "spaces-inside", "long-line", "no-line-breaks"])
def _b64_damaged(variant: str) -> bytes:
    enc = base64.b64encode(photo())
    if variant == "junk-chars":
        body = CRLF.join(b"!" + enc[i:i + 76] + b"*" for i in range(0, len(enc), 76))
    elif variant == "no-padding":
        body = b64(photo()).rstrip(b"=\r\n") + CRLF
    elif variant == "spaces-inside":
        body = CRLF.join(b" ".join(enc[j:j + 8] for j in range(i, i + 72, 8))
                         for i in range(0, len(enc), 72))
    elif variant == "long-line":
        body = CRLF.join(enc[i:i + 4000] for i in range(0, len(enc), 4000))
    else:
        body = enc
    return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"', body + CRLF)])


@construction("image-labelled-text", "encodings")
def _image_as_text() -> bytes:
    return mixed([TEXT, part(b"text/plain; charset=us-ascii", b64(photo()))])


@construction("zip-labelled-jpeg", "encodings")
def _zip_as_jpeg() -> bytes:
    return attach(zip_of({"photo.jpg": photo()}), "photo.jpg", "image/jpeg")


@construction("multipart-without-boundary-param", "encodings")
def _mp_no_boundary() -> bytes:
    return mixed([TEXT, part(b"multipart/mixed", b64(photo()))])


@construction("rfc822-with-base64-cte", "encodings")
def _rfc822_b64() -> bytes:
    inner = mixed([TEXT, photo_part()], b"inner-b2")
    return mixed([TEXT, part(b"message/rfc822", b64(inner))])


@construction("deep-forward", "encodings")
def _deep_forward() -> bytes:
    raw = mixed([TEXT, photo_part()], b"lvl0")
    for level in range(1, 6):
        raw = mixed([TEXT, part(b"message/rfc822", raw, cte=None)], b"lvl%d" % level)
    return raw


@construction("multipart-signed", "encodings")
def _signed() -> bytes:
    content = b'Content-Type: multipart/mixed; boundary="in"\r\n\r\n' + multipart_body(
        b"in", [TEXT, photo_part()])
    sig = part(b"application/pgp-signature", b"-----BEGIN PGP SIGNATURE-----\r\n\r\n"
               b"iQ==\r\n-----END PGP SIGNATURE-----\r\n", cte=b"7bit")
    return message(b'Content-Type: multipart/signed; protocol="application/pgp-signature"; '
                   b'micalg=pgp-sha256; boundary="sig"\r\n', multipart_body(b"sig", [content, sig]))


@construction("filename-only-rfc2231", "encodings")
def _rfc2231_name() -> bytes:
    img = part(b"application/octet-stream", b64(photo()),
               extra=b"Content-Disposition: attachment; filename*=utf-8''ph%C3%B6to.jpg\r\n")
    return mixed([TEXT, img])


# ----------------------------------------------------------------------------- HTML


def data_uri(prefix: str = "data:image/jpeg;base64,", body: bytes | None = None) -> str:
    return prefix + (body if body is not None else base64.b64encode(photo())).decode()


def html_message(html: str, charset: str = "us-ascii", cte: bytes = b"base64",
                 encoded: bytes | None = None) -> bytes:
    data = encoded if encoded is not None else html.encode(charset)
    body = b64(data) if cte == b"base64" else data
    if cte == b"quoted-printable":
        body = quopri.encodestring(data).replace(b"\n", CRLF)
    return mixed([TEXT, part(b"text/html; charset=" + charset.encode(), body, cte=cte)])


def _chunks(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


def img_html(src: str) -> str:
    return f'<html><body><p>hello</p><img src="{src}" alt="x"></body></html>'


_HTML_VARIANTS: dict[str, Callable[[], str]] = {
    "plain": lambda: img_html(data_uri()),
    "entity-comma": lambda: img_html(data_uri("data:image/jpeg;base64&#44;")),
    "entity-colon": lambda: img_html(data_uri("data&#58;image/jpeg;base64,")),
    "entity-slash-hex": lambda: img_html(data_uri("data:image&#x2F;jpeg;base64,")),
    "entity-all-scheme": lambda: img_html(
        data_uri("&#100;&#97;&#116;&#97;&#58;image/jpeg;base64,")),
    "named-entities-inside": lambda: img_html(data_uri(body=base64.b64encode(photo())
                                                       .replace(b"A", b"&Tab;A", 50))),
    "newlines-in-base64": lambda: img_html(data_uri(body=base64.encodebytes(photo()))),
    "tabs-in-base64": lambda: img_html(data_uri(body=b"\t".join(
        _chunks(base64.b64encode(photo()), 60)))),
    "leading-whitespace": lambda: img_html(" \n\t" + data_uri()),
    "upper-scheme": lambda: img_html(data_uri("DATA:IMAGE/JPEG;BASE64,")),
    "space-before-base64": lambda: img_html(data_uri("data:image/jpeg; base64,")),
    "quoted-param": lambda: img_html(data_uri("data:image/jpeg;name=&quot;a;b&quot;;base64,")),
    "extra-params": lambda: img_html(data_uri("data:image/jpeg;charset=utf-8;x=y;base64,")),
    "no-mime-type": lambda: img_html(data_uri("data:;base64,")),
    "wrong-mime-type": lambda: img_html(data_uri("data:text/plain;base64,")),
    "percent-encoded-base64": lambda: img_html(data_uri(body=base64.b64encode(photo())
                                                        .replace(b"/", b"%2F")
                                                        .replace(b"+", b"%2B"))),
    "percent-encoded-raw": lambda: img_html("data:image/jpeg," + "".join(
        f"%{b:02X}" for b in photo())),
    "single-quoted-unquoted": lambda: ("<html><body><img src=" + data_uri() + "></body></html>"),
    "css-background": lambda: (f"<html><body><div style=\"background-image:url('{data_uri()}')"
                               "\">x</div></body></html>"),
    "style-element": lambda: (f"<html><head><style>p{{background:url({data_uri()})}}</style>"
                              "</head><body><p>x</p></body></html>"),
    "inline-svg-image": lambda: (f'<html><body><svg width="640" height="480"><image href="'
                                 f'{data_uri()}" width="640" height="480"/></svg></body></html>'),
    "named-entities-slash-plus": lambda: img_html(data_uri(body=base64.b64encode(photo())
                                                           .replace(b"/", b"&sol;")
                                                           .replace(b"+", b"&plus;"))),
    "css-escapes": lambda: ("<html><body><div style=\"background:url(data\\3a image\\2f jpeg"
                            "\\3b base64\\2c " + base64.b64encode(photo()).decode()
                            + ')">x</div></body></html>'),
    "css-import-data-stylesheet": lambda: (
        '<html><head><style>@import url("data:text/css;base64,'
        + base64.b64encode(f"body{{background:url({data_uri()})}}".encode()).decode()
        + '");</style></head><body>x</body></html>'),
    "svg-utf8-data-uri": lambda: img_html(
        "data:image/svg+xml;utf8," + urllib.parse.quote(
            '<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480"><image href="'
            + data_uri() + '" width="640" height="480"/></svg>')),
    "picture-srcset": lambda: (f'<html><body><picture><source srcset="{data_uri()}">'
                               '<img src="cid:none"></picture></body></html>'),
}


@construction("html-data-uri", "html", variants=list(_HTML_VARIANTS))
def _html_variant(variant: str) -> bytes:
    return html_message(_HTML_VARIANTS[variant]())


@construction("html-charset", "html",
              variants=["utf-16", "utf-16le-bom", "utf-7", "utf-7-all-encoded", "utf-32",
                        "iso-2022-jp-redundant-escapes"])
def _html_charset(variant: str) -> bytes:
    html = img_html(data_uri())
    if variant == "iso-2022-jp-redundant-escapes":
        # ESC ( B switches to ASCII, which the text already is: decoders (the WHATWG one
        # too, as text comes between escapes) drop it, a search of the raw bytes trips on it.
        encoded = b"\x1b(B".join(_chunks(html.encode("ascii"), 40))
        return html_message(html, "iso-2022-jp", encoded=encoded)
    if variant == "utf-7-all-encoded":
        # UTF-7 may shift any character into modified base64; Python's encoder keeps ASCII
        # direct, so the whole text is shifted here by hand.
        shifted = base64.b64encode(html.encode("utf-16-be")).rstrip(b"=")
        return html_message(html, "utf-7", encoded=b"+" + shifted + b"-")
    if variant == "utf-16le-bom":
        return html_message(html, "utf-16", encoded=b"\xff\xfe" + html.encode("utf-16-le"))
    return html_message(html, variant)


@construction("html-quoted-printable", "html")
def _html_qp() -> bytes:
    return html_message(img_html(data_uri()), cte=b"quoted-printable")


@construction("html-attachment-file", "html")
def _html_file() -> bytes:
    return attach(img_html(data_uri()).encode(), "page.html", "text/html")


# ----------------------------------------------------------------------------- containers


def zip_of(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def tar_of(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()




def files() -> dict[str, bytes]:
    return {"photo.jpg": photo()}


@construction("zip-variants", "containers", variants=["stored", "in-zip", "comment-prefix"])
def _zip_variants(variant: str) -> bytes:
    if variant == "stored":
        return attach(zip_of(files(), zipfile.ZIP_STORED), "p.zip")
    if variant == "in-zip":
        return attach(zip_of({"inner.zip": zip_of(files())}), "p.zip")
    # Junk before the zip (self-extractor style): unzip tools find the central directory.
    return attach(b"MZ" + b"\0" * 4000 + zip_of(files()), "p.exe")


@construction("zip-deflate64", "containers")
def _deflate64() -> bytes:
    z = in_tempdir(files(), [sevenz(), "a", "-tzip", "-mm=Deflate64", "p.zip", "photo.jpg"],
                   "p.zip")
    return attach(z, "p.zip")


@construction("zip-entry-not-in-central-directory", "containers")
def _zip_hidden_entry() -> bytes:
    # Local entry for the photo, then a complete zip (local + central directory) of a decoy:
    # streaming readers see the photo, central-directory readers see only the decoy.
    hidden = zip_of(files(), zipfile.ZIP_STORED)
    hidden_local = hidden[:hidden.index(b"PK\x01\x02")]
    decoy_zip = zip_of({"readme.txt": b"nothing here\n"}, zipfile.ZIP_STORED)
    # Central directory offsets of the decoy must be shifted by the hidden local entry.
    cd = decoy_zip.index(b"PK\x01\x02")
    eocd = decoy_zip.rindex(b"PK\x05\x06")
    central = bytearray(decoy_zip[cd:eocd])
    offset = struct.unpack_from("<I", central, 42)[0] + len(hidden_local)
    struct.pack_into("<I", central, 42, offset)
    end = bytearray(decoy_zip[eocd:])
    struct.pack_into("<I", end, 16, cd + len(hidden_local))
    return attach(hidden_local + decoy_zip[:cd] + bytes(central) + bytes(end), "p.zip")


@construction("tar", "containers", variants=["plain", "gz", "bz2", "xz"])
def _tar(variant: str) -> bytes:
    mode = "w" if variant == "plain" else f"w:{variant}"
    return attach(tar_of(files(), mode), f"p.tar.{variant}")


@construction("tar-compressed", "containers", variants=["Z", "lz", "lz4", "zst"])
def _tar_compressed(variant: str) -> bytes:
    tool = {"Z": ["compress", "-c", "-f"], "lz": ["lzip", "-c"], "lz4": ["lz4", "-c"],
            "zst": ["zstd", "-c", "-q"]}[variant]
    data = in_tempdir({}, tool, "-", stdin=tar_of(files()))
    return attach(data, f"p.tar.{variant}")


@construction("single-file-compressed", "containers",
              variants=["gz", "bz2", "xz", "zst", "Z", "lz", "lz4"])
def _single_compressed(variant: str) -> bytes:
    if variant == "gz":
        data = gzip.compress(photo())
    elif variant in ("zst", "Z", "lz", "lz4"):
        tool = {"zst": ["zstd", "-c", "-q"], "Z": ["compress", "-c", "-f"],
                "lz": ["lzip", "-c"], "lz4": ["lz4", "-c"]}[variant]
        data = in_tempdir({}, tool, "-", stdin=photo())
    else:
        import bz2
        import lzma
        data = bz2.compress(photo()) if variant == "bz2" else lzma.compress(photo())
    return attach(data, f"photo.jpg.{variant}")


@construction("7z", "containers", variants=["lzma2", "copy"])
def _sevenz(variant: str) -> bytes:
    method = "-m0=lzma2" if variant == "lzma2" else "-m0=copy"
    return attach(in_tempdir(files(), [sevenz(), "a", method, "p.7z", "photo.jpg"], "p.7z"), "p.7z")


@construction("iso9660", "containers", variants=["plain", "joliet-rock"])
def _iso(variant: str) -> bytes:
    extra = ["-J", "-R"] if variant == "joliet-rock" else []
    iso = in_tempdir({"d/photo.jpg": photo()},
                     ["genisoimage", "-quiet", *extra, "-o", "p.iso", "d"], "p.iso")
    return attach(iso, "p.iso")


@construction("cab", "containers", variants=["stored", "mszip"])
def _cab(variant: str) -> bytes:
    extra = ["-z"] if variant == "mszip" else []
    cab = in_tempdir(files(), ["gcab", "-c", *extra, "p.cab", "photo.jpg"], "p.cab")
    return attach(cab, "p.cab")


@construction("cpio", "containers", variants=["newc", "odc", "bin"])
def _cpio(variant: str) -> bytes:
    data = in_tempdir(files(), ["cpio", "-o", "--quiet", "-H", variant], "-", stdin=b"photo.jpg\n")
    return attach(data, "p.cpio")


@construction("xar", "containers")
def _xar() -> bytes:
    return attach(in_tempdir(files(), ["bsdtar", "-cf", "p.xar", "--format", "xar", "photo.jpg"],
                             "p.xar"), "p.xar")


@construction("ar", "containers")
def _ar() -> bytes:
    return attach(in_tempdir(files(), ["bsdtar", "-cf", "p.a", "--format", "ar", "photo.jpg"],
                             "p.a"), "p.a")


def gpg_store(data: bytes, armor: bool = False) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mfdiff-gpg-") as home:
        args = ["gpg", "--batch", "--homedir", home, "--store", "-o", "-"]
        if armor:
            args.insert(4, "--armor")
        return in_tempdir({}, args, "-", stdin=data)


@construction("openpgp-literal", "containers", variants=["binary", "armored"])
def _pgp(variant: str) -> bytes:
    if variant == "binary":
        return attach(gpg_store(photo()), "photo.jpg.gpg", "application/octet-stream")
    return mixed([TEXT, part(b"text/plain", gpg_store(photo(), armor=True), cte=b"7bit")])


_HQX = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"


def _crc_hqx(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)


def binhex(data: bytes, name: bytes = b"photo.jpg") -> bytes:
    """BinHex 4.0 of a data fork (no resource fork), with the run-length step (0x90)."""
    header = (bytes([len(name)]) + name + b"\0" + b"JPEG" + b"8BIM" + b"\0\0"
              + struct.pack(">II", len(data), 0))
    stream = header + struct.pack(">H", _crc_hqx(header + b"\0\0"))
    stream += data + struct.pack(">H", _crc_hqx(data + b"\0\0"))
    stream += struct.pack(">H", _crc_hqx(b"\0\0"))
    # Run-length: a literal 0x90 is written 0x90 0x00.
    rle = stream.replace(b"\x90", b"\x90\x00")
    bits = "".join(f"{b:08b}" for b in rle)
    bits += "0" * (-len(bits) % 6)
    text = bytes(_HQX[int(bits[i:i + 6], 2)] for i in range(0, len(bits), 6))
    body = b":" + text + b":"
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"(This file must be converted with BinHex 4.0)\r\n" + CRLF.join(lines) + CRLF


@construction("binhex", "containers", variants=["attachment", "in-body"])
def _binhex(variant: str) -> bytes:
    hqx = binhex(photo())
    if variant == "attachment":
        return mixed([TEXT, part(b'application/mac-binhex40; name="photo.hqx"', hqx, cte=b"7bit")])
    return mixed([part(b"text/plain", b"Mac file follows\r\n\r\n" + hqx, cte=b"7bit")])


def rtf_with_pict(data: bytes) -> bytes:
    hexdata = binascii.hexlify(data)
    lines = b"\r\n".join(hexdata[i:i + 128] for i in range(0, len(hexdata), 128))
    return (b"{\\rtf1\\ansi{\\fonttbl\\f0 Arial;}\\f0 Photo:\\par{\\pict\\jpegblip\\picw640"
            b"\\pich480\\picwgoal9600\\pichgoal7200\r\n" + lines + b"}\\par}")


@construction("rtf-pict", "containers", variants=["attachment", "text-rtf-body"])
def _rtf(variant: str) -> bytes:
    rtf = rtf_with_pict(photo())
    if variant == "attachment":
        return attach(rtf, "doc.rtf", "application/rtf")
    return mixed([part(b"text/rtf", rtf, cte=b"7bit")])


def _tnef_attr(level: int, attr: int, data: bytes) -> bytes:
    return (bytes([level]) + struct.pack("<II", attr, len(data)) + data
            + struct.pack("<H", sum(data) & 0xFFFF))


def lzfu_literals(rtf: bytes) -> bytes:
    """Compressed RTF made of literal runs only (a control byte 0 before each 8 bytes)."""
    body = b"".join(b"\0" + rtf[i:i + 8] for i in range(0, len(rtf), 8))
    crc = ~zlib.crc32(body, 0xFFFFFFFF) & 0xFFFFFFFF  # MS-OXRTFCP: CRC-32, no pre/post xor
    return struct.pack("<IIII", len(body) + 12, len(rtf), 0x75465A4C, crc) + body


def tnef(attachment: bytes | None, rtf_body: bytes | None = None) -> bytes:
    out = struct.pack("<IH", 0x223E9F78, 0x0001)
    out += _tnef_attr(1, 0x00089006, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += _tnef_attr(1, 0x00069007, struct.pack("<II", 1252, 0))  # attOemCodepage
    if rtf_body is not None:
        # PR_RTF_COMPRESSED (LZFu, MS-OXRTFCP) inside attMAPIProps.
        blob = lzfu_literals(rtf_body)
        prop = struct.pack("<HHII", 0x0102, 0x1009, 1, len(blob)) + blob
        prop += b"\0" * (-len(prop) % 4)
        out += _tnef_attr(1, 0x00069003, struct.pack("<I", 1) + prop)
    if attachment is not None:
        out += _tnef_attr(2, 0x00069002, struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0))
        out += _tnef_attr(2, 0x00018010, b"photo.jpg\0")
        out += _tnef_attr(2, 0x0006800F, attachment)
    return out


@construction("tnef", "containers", variants=["attachment", "rtf-body-pict"])
def _tnef(variant: str) -> bytes:
    data = tnef(photo()) if variant == "attachment" else tnef(None, rtf_with_pict(photo()))
    return attach(data, "winmail.dat", "application/ms-tnef")


@construction("odf", "containers", variants=["flat-fodt", "zipped-odt", "docx"])
def _odf(variant: str) -> bytes:
    if variant == "flat-fodt":
        doc = ('<?xml version="1.0" encoding="UTF-8"?>\n<office:document xmlns:office='
               '"urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:draw="urn:oasis:names:tc:'
               'opendocument:xmlns:drawing:1.0" office:mimetype="application/vnd.oasis.'
               'opendocument.text"><office:body><office:text><draw:frame><draw:image>'
               '<office:binary-data>' + base64.encodebytes(photo()).decode()
               + '</office:binary-data></draw:image></draw:frame></office:text></office:body>'
               '</office:document>\n')
        return attach(doc.encode(), "doc.fodt", "application/vnd.oasis.opendocument.text-flat-xml")
    if variant == "zipped-odt":
        z = zip_of({"mimetype": b"application/vnd.oasis.opendocument.text",
                    "content.xml": b"<office:document-content/>", "Pictures/p.jpg": photo()})
        return attach(z, "doc.odt", "application/vnd.oasis.opendocument.text")
    z = zip_of({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>",
                "word/media/image1.jpeg": photo()})
    return attach(z, "doc.docx",
                  "application/vnd.openxmlformats-officedocument.wordprocessingml.document")


def fold(line: bytes, width: int = 75) -> bytes:
    return b"\r\n ".join(line[i:i + width] for i in range(0, len(line), width))


@construction("vcard-photo", "containers", variants=["v3-encoding-b", "v4-data-uri", "v21-base64"])
def _vcard(variant: str) -> bytes:
    enc = base64.b64encode(photo())
    if variant == "v3-encoding-b":
        prop = fold(b"PHOTO;ENCODING=b;TYPE=JPEG:" + enc)
        version = b"3.0"
    elif variant == "v4-data-uri":
        prop = fold(b"PHOTO:data:image/jpeg;base64," + enc)
        version = b"4.0"
    else:
        prop = b"PHOTO;ENCODING=BASE64;JPEG:\r\n " + fold(enc, 72) + b"\r\n"
        version = b"2.1"
    card = (b"BEGIN:VCARD\r\nVERSION:" + version + b"\r\nFN:Alice Example\r\n" + prop
            + b"\r\nEND:VCARD\r\n")
    return attach(card, "alice.vcf", "text/vcard")


@construction("svg-embedded-raster", "containers", variants=["href", "xlink-href"])
def _svg(variant: str) -> bytes:
    attr = "href" if variant == "href" else "xlink:href"
    svg = ('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink='
           '"http://www.w3.org/1999/xlink" width="640" height="480"><image ' + attr + '="'
           + data_uri() + '" x="0" y="0" width="640" height="480"/></svg>\n')
    return attach(svg.encode(), "picture.svg", "image/svg+xml")


@construction("eml-in-zip", "containers")
def _eml_in_zip() -> bytes:
    return attach(zip_of({"forward.eml": mixed([TEXT, photo_part()], b"inner-b2")}), "mail.zip")


@construction("nested-combo", "containers",
              variants=["tgz-in-zip", "zip-in-7z", "zip-in-rfc822-in-rfc822", "cpio-in-iso"])
def _nested(variant: str) -> bytes:
    if variant == "tgz-in-zip":
        return attach(zip_of({"a.tar.gz": tar_of(files(), "w:gz")}), "a.zip")
    if variant == "zip-in-7z":
        return attach(in_tempdir({"a.zip": zip_of(files())}, [sevenz(), "a", "p.7z", "a.zip"],
                                 "p.7z"), "p.7z")
    if variant == "cpio-in-iso":
        cpio = in_tempdir(files(), ["cpio", "-o", "--quiet", "-H", "newc"], "-",
                          stdin=b"photo.jpg\n")
        iso = in_tempdir({"d/a.cpio": cpio}, ["genisoimage", "-quiet", "-o", "p.iso", "d"],
                         "p.iso")
        return attach(iso, "p.iso")
    raw = attach(zip_of(files()), "p.zip")
    for level in range(2):
        raw = mixed([TEXT, part(b"message/rfc822", raw, cte=None)], b"fw%d" % level)
    return raw


# ----------------------------------------------------------------------------- images


def filler_frame(i: int) -> Image.Image:
    """A cheap distinct frame (few colours: GIF quantisation of noise costs seconds)."""
    img = Image.new("RGB", (W, H), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    x = (i * 29) % (W - 100)
    img.paste((255 - (37 * i) % 256, 0, 0), (x, 50, x + 100, 200))
    return img


def frames_with_photo_at(index: int, count: int) -> list[Image.Image]:
    return [photo_image() if i == index else filler_frame(i) for i in range(count)]


@construction("photo-as-late-frame", "partial-scans",
              variants=["gif-17", "gif-40", "webp-17", "tiff-17", "apng-17"])
def _late_frame(variant: str) -> bytes:
    fmt, n = variant.split("-")
    idx = int(n) - 1
    frames = frames_with_photo_at(idx, idx + 2)
    buf = io.BytesIO()
    kind = {"gif": "GIF", "webp": "WEBP", "tiff": "TIFF", "apng": "PNG"}[fmt]
    args: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    if kind in ("GIF", "WEBP", "PNG"):
        args["duration"] = 100
    if kind == "WEBP":
        args["quality"] = 90
    if kind == "TIFF":
        args["compression"] = "tiff_deflate"
    frames[0].save(buf, format=kind, **args)
    name = {"gif": "a.gif", "webp": "a.webp", "tiff": "a.tif", "apng": "a.png"}[fmt]
    return attach(buf.getvalue(), name, f"image/{'png' if fmt == 'apng' else fmt}")


@construction("image-format", "images",
              variants=["png", "gif", "bmp", "tiff", "webp", "jp2", "heic", "progressive-jpeg",
                        "cmyk-jpeg", "grayscale-png", "png16", "trailing-junk"])
def _image_format(variant: str) -> bytes:
    img = photo_image()
    if variant == "heic":
        import pillow_heif
        pillow_heif.register_heif_opener()
        data = image_bytes(img, "HEIF", quality=90)
    elif variant == "progressive-jpeg":
        data = image_bytes(img, "JPEG", quality=90, progressive=True)
    elif variant == "cmyk-jpeg":
        data = image_bytes(img.convert("CMYK"), "JPEG", quality=90)
    elif variant == "grayscale-png":
        data = image_bytes(img.convert("L"), "PNG")
    elif variant == "png16":
        arr = np.asarray(img.convert("L"), np.uint16) * 257
        data = image_bytes(Image.fromarray(arr), "PNG")
    elif variant == "trailing-junk":
        data = photo() + b"\0junk" * 2000
    elif variant == "gif":
        data = image_bytes(img, "GIF")
    elif variant == "jp2":
        data = image_bytes(img, "JPEG2000")
    else:
        data = image_bytes(img, variant.upper())
    return attach(data, f"photo.{variant}")


def exif_rotated() -> bytes:
    """Pixels stored turned a quarter; EXIF Orientation 6 says 'turn back to show'."""
    img = photo_image().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(img, "JPEG", quality=90, exif=exif.tobytes())


def icc_inverting_profile() -> bytes:
    """A display RGB profile (matrix/TRC, sRGB primaries) whose tone curves run backwards:
    colour-managed viewers show the inverse of the stored pixels."""
    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + struct.pack(">iii", *(round(v * 65536) for v in (x, y, z)))
    curve = b"curv\0\0\0\0" + struct.pack(">I", 2) + struct.pack(">HH", 65535, 0)
    desc_text = b"inverting\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(desc_text)) + desc_text
            + b"\0" * 8 + b"\0" * 3 + b"\0" * 67)
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
            (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve), (b"cprt", b"text\0\0\0\0none\0")]
    table = b""
    data = b""
    offset = 128 + 4 + 12 * len(tags)
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntr"
              + b"RGB " + b"XYZ " + b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 8
              + b"\0" * 8 + b"\0" * 4 + struct.pack(">iii", 63190, 65536, 54061) + b"\0" * 4
              + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128, len(header)
    return header + struct.pack(">I", len(tags)) + table + data


@construction("viewer-transform", "viewer",
              variants=["exif-orientation", "icc-inverting-profile"])
def _viewer_transform(variant: str) -> bytes:
    if variant == "exif-orientation":
        return attach(exif_rotated(), "photo.jpg", "image/jpeg")
    inverted = ImageOps.invert(photo_image())
    data = image_bytes(inverted, "JPEG", quality=92, icc_profile=icc_inverting_profile())
    return attach(data, "photo.jpg", "image/jpeg")


# ----------------------------------------------------------------------------- PDF

W, H = 640, 480


def stream(entries: bytes, data: bytes) -> bytes:
    return b"<<" + entries + b"/Length %d>>\nstream\n" % len(data) + data + b"\nendstream"


def pdf(objects: list[bytes], *, startxref_shift: int = 0, xref: bool = True,
        prefix: bytes = b"") -> bytes:
    """Object 1 must be the catalog. `startxref_shift` moves the startxref pointer off."""
    out = prefix + b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out) - len(prefix))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref_at = len(out) - len(prefix)
    if xref:
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
        out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R>>\n" % (len(objects) + 1)
    if xref:
        out += b"startxref\n%d\n" % (xref_at + startxref_shift)
    return out + b"%%EOF\n"


def page_pdf(content: bytes, xobjects: dict[str, bytes], *, width: int = W, height: int = H,
             startxref_shift: int = 0, xref: bool = True, prefix: bytes = b"") -> bytes:
    """One page of `width` x `height` points drawing `content` with image XObjects."""
    names = list(xobjects)
    first_x = 5
    res = b"".join(b"/%s %d 0 R" % (n.encode(), first_x + i) for i, n in enumerate(names))
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Resources<</XObject<<%s>>>>"
        b"/Contents 4 0 R>>" % (width, height, res),
        stream(b"", content),
        *xobjects.values(),
    ]
    return pdf(objects, startxref_shift=startxref_shift, xref=xref, prefix=prefix)


def jpeg_xobject(data: bytes, width: int = W, height: int = H, extra: bytes = b"") -> bytes:
    return stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB"
                  b"/BitsPerComponent 8/Filter/DCTDecode" % (width, height) + extra, data)


DRAW = b"q %d 0 0 %d 0 0 cm /Im0 Do Q" % (W, H)


def photo_pdf(*, startxref_shift: int = 0, xref: bool = True, prefix: bytes = b"") -> bytes:
    return page_pdf(DRAW, {"Im0": jpeg_xobject(photo())}, startxref_shift=startxref_shift,
                    xref=xref, prefix=prefix)


def attach_pdf(data: bytes) -> bytes:
    return attach(data, "doc.pdf", "application/pdf")


@construction("pdf-plain", "control")
def _pdf_plain() -> bytes:
    return attach_pdf(photo_pdf())


@construction("pdf-structure", "partial-scans",
              variants=["wrong-startxref", "no-xref", "junk-before-header", "page-17",
                        "xref-offsets-shifted", "cut-after-last-object"])
def _pdf_structure(variant: str) -> bytes:
    if variant == "xref-offsets-shifted":
        doc = photo_pdf()
        head, sep, tail = doc.partition(b"xref\n")
        lines = tail.split(b"\n")
        shifted = [b"%010d 00000 n " % (int(ln[:10]) + 7) if ln.endswith(b" n ") else ln
                   for ln in lines]
        return attach_pdf(head + sep + b"\n".join(shifted))
    if variant == "cut-after-last-object":
        doc = photo_pdf()
        return attach_pdf(doc[:doc.rindex(b"endobj") + len(b"endobj\n")])
    if variant == "wrong-startxref":
        return attach_pdf(photo_pdf(startxref_shift=-37))
    if variant == "no-xref":
        return attach_pdf(photo_pdf(xref=False))
    if variant == "junk-before-header":
        return attach_pdf(photo_pdf(prefix=b"junk " * 100 + b"\n"))
    return attach_pdf(many_pages(17))


def many_pages(n: int) -> bytes:
    pages = []
    objects: list[bytes] = [b"<</Type/Catalog/Pages 2 0 R>>", b""]
    for i in range(n):
        img = photo() if i == n - 1 else image_bytes(noise_image(2000 + i, 64, 48), "JPEG")
        # Filler pages are small: cheap to render for the references and for mailfilter.
        w, h = (W, H) if i == n - 1 else (64, 48)
        base = len(objects) + 1
        pages.append(base)
        objects += [
            b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Resources<</XObject<</Im0 %d 0 R>>>>"
            b"/Contents %d 0 R>>" % (w, h, base + 2, base + 1),
            stream(b"", b"q %d 0 0 %d 0 0 cm /Im0 Do Q" % (w, h)),
            jpeg_xobject(img, w, h),
        ]
    objects[1] = b"<</Type/Pages/Kids[%s]/Count %d>>" % (
        b" ".join(b"%d 0 R" % p for p in pages), n)
    return pdf(objects)


@construction("pdf-stream-encoding", "partial-scans",
              variants=["ascii85", "ascii85-without-eod", "asciihex", "flate-raw-rgb"])
def _pdf_encoding(variant: str) -> bytes:
    if variant.startswith("ascii85"):
        enc = base64.a85encode(photo(), wrapcol=72, adobe=True)[2:]  # drop the "<~"
        if variant == "ascii85-without-eod":
            enc = enc[:-2]
        xo = stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB"
                    b"/BitsPerComponent 8/Filter[/ASCII85Decode/DCTDecode]" % (W, H), enc)
    elif variant == "asciihex":
        xo = stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB"
                    b"/BitsPerComponent 8/Filter[/ASCIIHexDecode/DCTDecode]" % (W, H),
                    binascii.hexlify(photo()) + b">")
    else:
        xo = stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB"
                    b"/BitsPerComponent 8/Filter/FlateDecode" % (W, H),
                    zlib.compress(photo_image().tobytes()))
    return attach_pdf(page_pdf(DRAW, {"Im0": xo}))


@construction("pdf-encrypted-empty-password", "partial-scans",
              variants=["AES-128", "AES-256", "RC4-128"])
def _pdf_encrypted(algorithm: str) -> bytes:
    from pypdf import PdfReader, PdfWriter
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(photo_pdf())))
    writer.encrypt(user_password="", owner_password="owner-secret", algorithm=algorithm)
    buf = io.BytesIO()
    writer.write(buf)
    return attach_pdf(buf.getvalue())


@construction("pdf-viewer-draws", "viewer",
              variants=["inline-image-dct", "inline-image-raw", "decode-inverted", "clipped",
                        "tiles-2x2", "tiles-4x3", "form-xobject", "jpx", "incremental-update"])
def _pdf_viewer(variant: str) -> bytes:
    img = photo_image()
    if variant == "inline-image-dct":
        content = (b"q %d 0 0 %d 0 0 cm BI /W %d /H %d /CS /RGB /BPC 8 /F /DCT ID\n" % (W, H, W, H)
                   + photo() + b"\nEI Q")
        return attach_pdf(page_pdf(content, {}))
    if variant == "inline-image-raw":
        small = img.resize((160, 120))
        content = (b"q %d 0 0 %d 0 0 cm BI /W 160 /H 120 /CS /RGB /BPC 8 /F /Fl ID\n" % (W, H)
                   + zlib.compress(small.tobytes()) + b"\nEI Q")
        return attach_pdf(page_pdf(content, {}))
    if variant == "decode-inverted":
        inv = image_bytes(ImageOps.invert(img), "JPEG", quality=92)
        return attach_pdf(page_pdf(DRAW, {"Im0": jpeg_xobject(inv, extra=b"/Decode[1 0 1 0 1 0]")}))
    if variant == "clipped":
        wide = Image.new("RGB", (2 * W, H))
        wide.paste(img, (0, 0))
        wide.paste(decoy(77), (W, 0))
        content = b"q 0 0 %d %d re W n %d 0 0 %d 0 0 cm /Im0 Do Q" % (W, H, 2 * W, H)
        return attach_pdf(page_pdf(content, {"Im0": jpeg_xobject(
            image_bytes(wide, "JPEG", quality=92), 2 * W, H)}))
    if variant.startswith("tiles"):
        cols, rows = (2, 2) if variant == "tiles-2x2" else (4, 3)
        tw, th = W // cols, H // rows
        xobjects: dict[str, bytes] = {}
        content = b""
        for r in range(rows):
            for c in range(cols):
                tile = img.crop((c * tw, r * th, (c + 1) * tw, (r + 1) * th))
                name = f"T{r}{c}"
                xobjects[name] = jpeg_xobject(image_bytes(tile, "JPEG", quality=92), tw, th)
                # PDF y runs upwards: row 0 of the photo is at the top of the page.
                content += b"q %d 0 0 %d %d %d cm /%s Do Q\n" % (
                    tw, th, c * tw, H - (r + 1) * th, name.encode())
        return attach_pdf(page_pdf(content, xobjects))
    if variant == "form-xobject":
        form = stream(b"/Type/XObject/Subtype/Form/BBox[0 0 %d %d]/Resources<</XObject"
                      b"<</Im0 6 0 R>>>>" % (W, H), DRAW)
        return attach_pdf(page_pdf(b"/Fm0 Do", {"Fm0": form, "Im0": jpeg_xobject(photo())}))
    if variant == "jpx":
        jp2 = image_bytes(img, "JPEG2000")
        xo = stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB"
                    b"/BitsPerComponent 8/Filter/JPXDecode" % (W, H), jp2)
        return attach_pdf(page_pdf(DRAW, {"Im0": xo}))
    # Incremental update: revision 1 draws a decoy; revision 2 adds a second image and
    # a new content stream drawing it, in an update section with its own xref.
    base = page_pdf(DRAW, {"Im0": jpeg_xobject(image_bytes(decoy(78), "JPEG"))})
    prev = int(base.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    out = base
    offs = {}
    offs[4] = len(out)
    out += b"4 0 obj\n" + stream(b"", b"q %d 0 0 %d 0 0 cm /Im1 Do Q" % (W, H)) + b"\nendobj\n"
    offs[6] = len(out)
    out += b"6 0 obj\n" + jpeg_xobject(photo()) + b"\nendobj\n"
    offs[3] = len(out)
    out += (b"3 0 obj\n<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Resources<</XObject"
            b"<</Im0 5 0 R/Im1 6 0 R>>>>/Contents 4 0 R>>\nendobj\n" % (W, H))
    xref_at = len(out)
    out += b"xref\n3 2\n%010d 00000 n \n%010d 00000 n \n6 1\n%010d 00000 n \n" % (
        offs[3], offs[4], offs[6])
    out += b"trailer\n<</Size 7/Root 1 0 R/Prev %d>>\nstartxref\n%d\n%%%%EOF\n" % (prev, xref_at)
    return attach_pdf(out)


@construction("pdf-in-container", "containers", variants=["zip", "tar-gz", "rfc822"])
def _pdf_nested(variant: str) -> bytes:
    doc = photo_pdf()
    if variant == "zip":
        return attach(zip_of({"doc.pdf": doc}), "docs.zip")
    if variant == "tar-gz":
        return attach(tar_of({"doc.pdf": doc}, "w:gz"), "docs.tgz")
    return mixed([TEXT, part(b"message/rfc822", attach_pdf(doc), cte=None)])


def names() -> list[str]:
    return list(REGISTRY)


# ----------------------------------------------------------------------------- more

PASSWORD = "photo123"  # references.PASSWORD: the recipient reads it in the message
PASSWORD_TEXT = part(b"text/plain", f"The password is {PASSWORD}\r\n".encode(), cte=b"7bit")


@construction("password-protected", "limits",
              variants=["zip-aes", "zip-zipcrypto", "7z-encrypted-headers", "pdf-user-password"],
              limit="password")
def _password(variant: str) -> bytes:
    if variant == "pdf-user-password":
        from pypdf import PdfReader, PdfWriter
        writer = PdfWriter(clone_from=PdfReader(io.BytesIO(photo_pdf())))
        writer.encrypt(user_password=PASSWORD, owner_password="owner-secret", algorithm="AES-128")
        buf = io.BytesIO()
        writer.write(buf)
        return mixed([PASSWORD_TEXT, file_part(buf.getvalue(), "doc.pdf", "application/pdf")])
    if variant == "7z-encrypted-headers":
        args = [sevenz(), "a", f"-p{PASSWORD}", "-mhe=on", "p.7z", "photo.jpg"]
        name = "p.7z"
    else:
        method = "AES256" if variant == "zip-aes" else "ZipCrypto"
        args = [sevenz(), "a", "-tzip", f"-p{PASSWORD}", f"-mem={method}", "p.zip", "photo.jpg"]
        name = "p.zip"
    return mixed([PASSWORD_TEXT, file_part(in_tempdir(files(), args, name), name)])


@construction("smime-signed-opaque", "containers")
def _smime() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs7
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@example.org")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    entity = (b'Content-Type: multipart/mixed; boundary="in"\r\n\r\n'
              + multipart_body(b"in", [TEXT, photo_part()]))
    der = (pkcs7.PKCS7SignatureBuilder().set_data(entity)
           .add_signer(cert, key, hashes.SHA256()).sign(serialization.Encoding.DER, []))
    return message(b'Content-Type: application/pkcs7-mime; smime-type=signed-data; '
                   b'name="smime.p7m"\r\nContent-Transfer-Encoding: base64\r\n'
                   b'Content-Disposition: attachment; filename="smime.p7m"\r\n', b64(der))


@construction("more-encodings", "encodings",
              variants=["binary-cte", "uuencoded-zip", "begin-base64", "top-level-rfc822",
                        "message-global", "base64-garbage-line"])
def _more_encodings(variant: str) -> bytes:
    if variant == "binary-cte":
        return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"', photo(), cte=b"binary")])
    if variant == "uuencoded-zip":
        text = b"Archive:\r\n\r\n" + uuencode(zip_of(files()), "photos.zip") + b"\r\n"
        return mixed([part(b"text/plain", text, cte=b"7bit")])
    if variant == "begin-base64":
        enc = CRLF.join(_chunks(base64.b64encode(photo()), 76))
        text = b"begin-base64 644 photo.jpg\r\n" + enc + b"\r\n====\r\n"
        return mixed([part(b"text/plain", text, cte=b"7bit")])
    if variant == "top-level-rfc822":
        return message(b"Content-Type: message/rfc822\r\n", mixed([TEXT, photo_part()], b"in"))
    if variant == "message-global":
        return mixed([TEXT, part(b"message/global", mixed([TEXT, photo_part()], b"in"),
                                 cte=b"8bit")])
    lines = b64(photo()).split(CRLF)
    lines.insert(len(lines) // 2, b"-- this line is not base64 --")
    return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"', CRLF.join(lines))])


@construction("more-images", "images", variants=["ico", "tiff-page-2", "webp-lossless",
                                                 "palette-png", "jpeg-in-gif-frame-2"])
def _more_images(variant: str) -> bytes:
    img = photo_image()
    if variant == "ico":
        data = image_bytes(img.resize((256, 192)), "ICO", sizes=[(256, 192)])
    elif variant == "tiff-page-2":
        buf = io.BytesIO()
        filler_frame(3).save(buf, "TIFF", save_all=True, append_images=[img],
                             compression="tiff_deflate")
        data = buf.getvalue()
    elif variant == "webp-lossless":
        data = image_bytes(img, "WEBP", lossless=True)
    elif variant == "palette-png":
        data = image_bytes(img.quantize(256), "PNG")
    else:
        buf = io.BytesIO()
        filler_frame(5).save(buf, "GIF", save_all=True, append_images=[img], duration=500)
        data = buf.getvalue()
    return attach(data, "picture.bin")


def _pdf_with(content: bytes, extra_objects: list[bytes], resources: bytes,
              page_extra: bytes = b"") -> bytes:
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Resources<<%s>>/Contents 4 0 R%s>>"
        % (W, H, resources, page_extra),
        stream(b"", content),
        *extra_objects,
    ]
    return pdf(objects)


@construction("pdf-more", "viewer",
              variants=["pattern-fill", "annotation-appearance", "flate-over-dct",
                        "indexed-colour", "embedded-file", "softmask-hidden-decoy"])
def _pdf_more(variant: str) -> bytes:
    img = photo_image()
    if variant == "pattern-fill":
        pattern = stream(b"/PatternType 1/PaintType 1/TilingType 1/BBox[0 0 %d %d]/XStep %d"
                         b"/YStep %d/Resources<</XObject<</Im0 6 0 R>>>>" % (W, H, W, H), DRAW)
        doc = _pdf_with(b"/Pattern cs /P0 scn 0 0 %d %d re f" % (W, H),
                        [pattern, jpeg_xobject(photo())], b"/Pattern<</P0 5 0 R>>")
    elif variant == "annotation-appearance":
        form = stream(b"/Type/XObject/Subtype/Form/BBox[0 0 %d %d]/Resources<</XObject"
                      b"<</Im0 7 0 R>>>>" % (W, H), DRAW)
        annot = b"<</Type/Annot/Subtype/Stamp/Rect[0 0 %d %d]/F 4/AP<</N 6 0 R>>>>" % (W, H)
        doc = _pdf_with(b"", [annot, form, jpeg_xobject(photo())], b"",
                        b"/Annots[5 0 R]")
    elif variant == "flate-over-dct":
        xo = stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB"
                    b"/BitsPerComponent 8/Filter[/FlateDecode/DCTDecode]" % (W, H),
                    zlib.compress(photo()))
        doc = page_pdf(DRAW, {"Im0": xo})
    elif variant == "indexed-colour":
        pal = img.quantize(256)
        palette = bytes(pal.getpalette()[:768])  # type: ignore[index]
        palette += b"\0" * (768 - len(palette))
        xo = stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace[/Indexed"
                    b"/DeviceRGB 255<%s>]/BitsPerComponent 8/Filter/FlateDecode"
                    % (W, H, binascii.hexlify(palette)), zlib.compress(pal.tobytes()))
        doc = page_pdf(DRAW, {"Im0": xo})
    elif variant == "embedded-file":
        ef = stream(b"/Type/EmbeddedFile/Subtype/image#2Fjpeg", photo())
        spec = b"<</Type/Filespec/F(photo.jpg)/UF(photo.jpg)/EF<</F 5 0 R>>>>"
        objects = [b"<</Type/Catalog/Pages 2 0 R/Names<</EmbeddedFiles<</Names[(photo.jpg) "
                   b"6 0 R]>>>>>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
                   b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Contents 4 0 R>>" % (W, H),
                   stream(b"", b"BT /F1 12 Tf ET"), ef, spec]
        doc = pdf(objects)
    else:
        # A decoy drawn over the photo with a soft mask of zero alpha: the viewer shows
        # the photo, the last-drawn image is the decoy.
        mask = stream(b"/Type/XObject/Subtype/Image/Width 8/Height 8/ColorSpace/DeviceGray"
                      b"/BitsPerComponent 8", b"\0" * 64)
        decoy_xo = jpeg_xobject(image_bytes(decoy(79), "JPEG"), extra=b"/SMask 7 0 R")
        content = DRAW + b" q %d 0 0 %d 0 0 cm /Im1 Do Q" % (W, H)
        doc = _pdf_with(content, [jpeg_xobject(photo()), decoy_xo, mask],
                        b"/XObject<</Im0 5 0 R/Im1 6 0 R>>")
    return attach_pdf(doc)


@construction("html-more", "html", variants=["object-data", "base64-html-in-zip",
                                             "data-uri-in-eml-in-zip"])
def _html_more(variant: str) -> bytes:
    if variant == "object-data":
        return html_message(f'<html><body><object data="{data_uri()}" type="image/jpeg">'
                            "</object></body></html>")
    page = img_html(data_uri("data:image/jpeg;base64&#44;")).encode()
    if variant == "base64-html-in-zip":
        return attach(zip_of({"page.html": page}), "page.zip")
    inner = html_message(page.decode())
    return attach(zip_of({"m.eml": inner}), "mail.zip")


@construction("zip-more", "containers", variants=["data-descriptor", "zip64", "bzip2-method",
                                                  "lzma-method"])
def _zip_more(variant: str) -> bytes:
    if variant == "data-descriptor":
        class Unseekable(io.RawIOBase):
            def __init__(self) -> None:
                self.buf = bytearray()

            def writable(self) -> bool:
                return True

            def write(self, b: object) -> int:
                data = bytes(b)  # type: ignore[call-overload]
                self.buf += data
                return len(data)
        sink = Unseekable()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as z, \
                z.open("photo.jpg", "w") as f:
            f.write(photo())
        return attach(bytes(sink.buf), "p.zip")
    if variant == "zip64":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, \
                z.open("photo.jpg", "w", force_zip64=True) as f:
            f.write(photo())
        return attach(buf.getvalue(), "p.zip")
    method = zipfile.ZIP_BZIP2 if variant == "bzip2-method" else zipfile.ZIP_LZMA
    return attach(zip_of(files(), method), "p.zip")


@construction("truncated-jpeg", "images", variants=["no-eoi", "cut-at-95-percent"])
def _truncated(variant: str) -> bytes:
    data = photo()[:-2] if variant == "no-eoi" else photo()[: len(photo()) * 95 // 100]
    return attach(data, "photo.jpg", "image/jpeg")


@construction("structure-more", "encodings",
              variants=["zip-nested-5-deep", "photo-after-300-parts", "zip-duplicate-name",
                        "rfc822-quoted-printable"])
def _structure_more(variant: str) -> bytes:
    if variant == "zip-nested-5-deep":
        data = zip_of(files())
        for level in range(4):
            data = zip_of({f"level{level}.zip": data})
        return attach(data, "deep.zip")
    if variant == "photo-after-300-parts":
        return mixed([TEXT] * 300 + [photo_part()])
    if variant == "zip-duplicate-name":
        buf = io.BytesIO()
        with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
            warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point
            z.writestr("photo.jpg", image_bytes(decoy(80), "JPEG"))
            z.writestr("photo.jpg", photo())  # extractors overwrite: the last one stays
        return attach(buf.getvalue(), "p.zip")
    inner = mixed([TEXT, photo_part()], b"inner-b2")
    return mixed([TEXT, part(b"message/rfc822", quoted_printable(inner),
                             cte=b"quoted-printable")])


@construction("pdf-drawing-more", "viewer",
              variants=["contents-array", "type3-glyph", "strips-48"])
def _pdf_drawing_more(variant: str) -> bytes:
    img = photo_image()
    if variant == "contents-array":
        objects = [
            b"<</Type/Catalog/Pages 2 0 R>>",
            b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
            b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Resources<</XObject<</Im0 6 0 R>>>>"
            b"/Contents[4 0 R 5 0 R]>>" % (W, H),
            stream(b"", b"q %d 0 0 %d 0 0 cm" % (W, H)),
            stream(b"", b"/Im0 Do Q"),
            jpeg_xobject(photo()),
        ]
        return attach_pdf(pdf(objects))
    if variant == "type3-glyph":
        glyph = stream(b"", b"1000 0 d0 q 1000 0 0 1000 0 0 cm /Im0 Do Q")
        font = (b"<</Type/Font/Subtype/Type3/FontBBox[0 0 1000 1000]/FontMatrix[0.001 0 0 0.001"
                b" 0 0]/CharProcs<</a 6 0 R>>/Encoding<</Type/Encoding/Differences[97/a]>>"
                b"/FirstChar 97/LastChar 97/Widths[1000]/Resources<</XObject<</Im0 7 0 R>>>>>>")
        content = b"BT /F1 1 Tf %d 0 0 %d 0 0 Tm (a) Tj ET" % (W, H)
        return attach_pdf(_pdf_with(content, [font, glyph, jpeg_xobject(photo())],
                                    b"/Font<</F1 5 0 R>>"))
    strips = 48
    sh = H // strips
    xobjects: dict[str, bytes] = {}
    content = b""
    for r in range(strips):
        strip = img.crop((0, r * sh, W, (r + 1) * sh))
        name = f"S{r}"
        xobjects[name] = jpeg_xobject(image_bytes(strip, "JPEG", quality=92), W, sh)
        content += b"q %d 0 0 %d 0 %d cm /%s Do Q\n" % (W, sh, H - (r + 1) * sh, name.encode())
    return attach_pdf(page_pdf(content, xobjects))


@construction("html-even-more", "html",
              variants=["svg-data-uri-nesting", "entity-newlines-in-base64", "all-entities"])
def _html_even_more(variant: str) -> bytes:
    if variant == "svg-data-uri-nesting":
        svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480"><image href="'
               + data_uri() + '" width="640" height="480"/></svg>')
        outer = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
        return html_message(img_html(outer))
    enc = base64.b64encode(photo())
    if variant == "entity-newlines-in-base64":
        body = b"&#10;".join(_chunks(enc, 64))
    else:
        body = b"".join(b"&#%d;" % c for c in enc)
    return html_message(img_html(data_uri(body=body)))


@construction("archive-methods", "containers",
              variants=["zip-ppmd", "zip-xz", "7z-ppmd", "7z-bzip2", "7z-deflate", "wim"])
def _archive_methods(variant: str) -> bytes:
    kind, method = variant.split("-") if "-" in variant else (variant, "")
    if kind == "wim":
        return attach(in_tempdir(files(), [sevenz(), "a", "-twim", "p.wim", "photo.jpg"], "p.wim"),
                      "p.wim")
    if kind == "zip":
        name = "p.zip"
        args = [sevenz(), "a", "-tzip", f"-mm={ {'ppmd': 'PPMd', 'xz': 'XZ'}[method] }", name,
                "photo.jpg"]
    else:
        name = "p.7z"
        m = {"ppmd": "PPMd", "bzip2": "BZip2", "deflate": "Deflate"}[method]
        args = [sevenz(), "a", f"-m0={m}", name, "photo.jpg"]
    return attach(in_tempdir(files(), args, name), name)


def ics_with_attachment(data: bytes) -> bytes:
    prop = fold(b"ATTACH;FMTTYPE=image/jpeg;ENCODING=BASE64;VALUE=BINARY;X-FILENAME=photo.jpg:"
                + base64.b64encode(data))
    return (b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\n"
            b"UID:1@test.example\r\nDTSTART:20261207T100000Z\r\nSUMMARY:Meeting\r\n" + prop
            + b"\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


@construction("icalendar-attach", "containers", variants=["attachment", "text-calendar-part"])
def _ics(variant: str) -> bytes:
    ics = ics_with_attachment(photo())
    if variant == "attachment":
        return attach(ics, "invite.ics", "text/calendar")
    return mixed([TEXT, part(b"text/calendar; method=REQUEST; charset=utf-8", b64(ics))])


@construction("header-more", "headers",
              variants=["inner-boundary-extends-outer", "outer-boundary-extends-inner",
                        "boundary-200-chars", "nul-in-header", "html-utf-16be"])
def _header_more(variant: str) -> bytes:
    if variant in ("inner-boundary-extends-outer", "outer-boundary-extends-inner"):
        outer, inner = (b"B", b"B2") if variant == "inner-boundary-extends-outer" else (b"B2", b"B")
        nested = (b'Content-Type: multipart/mixed; boundary="' + inner + b'"\r\n\r\n'
                  + multipart_body(inner, [photo_part()]))
        return message(b'Content-Type: multipart/mixed; boundary="' + outer + b'"\r\n',
                       multipart_body(outer, [TEXT, nested]))
    if variant == "boundary-200-chars":
        b = b"x" * 200
        return message(b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n',
                       _photo_body(b))
    if variant == "nul-in-header":
        return message(b"X-Nul: a\0b\r\n" + b'Content-Type: multipart/mixed; boundary="B"\r\n',
                       _photo_body())
    html = img_html(data_uri())
    return html_message(html, "utf-16be")


@construction("animation-composited", "partial-scans",
              variants=["gif-two-halves", "gif-4-strips", "apng-two-halves", "webp-two-halves"])
def _composited(variant: str) -> bytes:
    """No stored frame holds the whole photo: each frame adds a part over the last one
    (the writers store only the changed region), and the viewer shows the sum."""
    fmt, how = variant.split("-", 1)
    img = photo_image()
    if fmt == "gif":
        # Quantised once, frames in that palette: GIF quantisation per frame costs seconds.
        img = img.quantize(256)
    parts = 2 if how == "two-halves" else 4
    frames = []
    canvas = Image.new(img.mode, (W, H))
    if fmt == "gif":
        canvas.putpalette(img.getpalette() or [])
    step = H // parts
    for k in range(parts):
        box = (0, k * step, W, H if k == parts - 1 else (k + 1) * step)
        canvas.paste(img.crop(box), box[:2])
        frames.append(canvas.copy())
    buf = io.BytesIO()
    kind = {"gif": "GIF", "apng": "PNG", "webp": "WEBP"}[fmt]
    extra: dict[str, object] = {"quality": 90} if kind == "WEBP" else {}
    frames[0].save(buf, format=kind, save_all=True, append_images=frames[1:], duration=200,
                   loop=0, **extra)
    return attach(buf.getvalue(), f"anim.{ {'gif': 'gif', 'apng': 'png', 'webp': 'webp'}[fmt] }")


@construction("limits-probe", "limits",
              variants=["zip-with-bomb-padding", "zip-1100-members", "zip-250-images-first",
                        "pdf-photo-on-page-60"], limit="size-or-count")
def _limits_probe(variant: str) -> bytes:
    if variant == "zip-with-bomb-padding":
        return attach(zip_of({"padding.bin": b"\0" * (8 * 1024 * 1024), "photo.jpg": photo()}),
                      "p.zip")
    if variant == "zip-1100-members":
        # One content for all: the references open each distinct file only once.
        members = {f"f{i:04d}.txt": b"x\n" for i in range(1100)}
        members["zz/photo.jpg"] = photo()
        return attach(zip_of(members), "p.zip")
    if variant == "zip-250-images-first":
        small = {f"img{i:03d}.png": image_bytes(filler_frame(i).resize((64, 64)), "PNG")
                 for i in range(250)}
        small["zz/photo.jpg"] = photo()
        return attach(zip_of(small), "p.zip")
    return attach_pdf(many_pages(60))


@construction("ambiguity-budget", "headers",
              variants=["ten-content-types", "nested-two-readings-3-levels", "five-boundaries",
                        "cte-with-comment"])
def _ambiguity_budget(variant: str) -> bytes:
    if variant == "ten-content-types":
        plain = b"".join(b"Content-Type: text/plain; x=%d\r\n" % i for i in range(9))
        return message(plain + b'Content-Type: multipart/mixed; boundary="B"\r\n', _photo_body())
    if variant == "nested-two-readings-3-levels":
        inner = photo_part()
        for level in range(3):
            b = b"L%d" % level
            inner = (b"Content-Type: text/plain\r\n"
                     b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n'
                     + multipart_body(b, [TEXT, inner]))
        head, _, body = inner.partition(b"\r\n\r\n")
        return message(head + CRLF, body)
    if variant == "five-boundaries":
        params = b"".join(b'; boundary="b%d"' % i for i in range(5))
        return message(b"Content-Type: multipart/mixed" + params + CRLF, _photo_body(b"b4"))
    img = part(b'image/jpeg; name="photo.jpg"', b64(photo()), cte=b"base64 (the usual)")
    return mixed([TEXT, img])


@construction("encoding-edges", "encodings",
              variants=["base64-padding-mid-stream", "qp-soft-break-trailing-space",
                        "uuencode-in-base64-text", "binhex-in-qp-text"])
def _encoding_edges(variant: str) -> bytes:
    if variant == "base64-padding-mid-stream":
        data = photo()
        cuts = [0, 1000, 2001, 30002, len(data)]
        enc = b"".join(base64.b64encode(data[a:b]) for a, b in itertools.pairwise(cuts))
        return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"',
                                 CRLF.join(_chunks(enc, 76)) + CRLF)])
    if variant == "qp-soft-break-trailing-space":
        body = quoted_printable(photo()).replace(b"=\r\n", b"= \t\r\n")
        return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"', body, cte=b"quoted-printable")])
    if variant == "uuencode-in-base64-text":
        text = b"Here:\r\n\r\n" + uuencode(photo()) + b"\r\n"
        return mixed([part(b"text/plain; charset=us-ascii", b64(text))])
    text = b"Mac file:\r\n\r\n" + binhex(photo())
    return mixed([part(b"text/plain; charset=us-ascii", quoted_printable(text),
                       cte=b"quoted-printable")])


@construction("html-image-count", "limits", variants=["300-tiny-images-first",
                                                      "250-small-images-first"],
              limit="image-count")
def _html_image_count(variant: str) -> bytes:
    size = (1, 1) if variant.startswith("300") else (64, 64)
    count = 300 if variant.startswith("300") else 250
    imgs = []
    for i in range(count):
        colour = (i % 256, (i * 7) % 256, (i * 13) % 256)
        png = image_bytes(Image.new("RGB", size, colour), "PNG")
        imgs.append(f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    return html_message("<html><body>" + "".join(imgs) + f'<img src="{data_uri()}">'
                        "</body></html>")


@construction("polyglot", "containers",
              variants=["pdf-then-zip", "jpeg-then-zip", "png-then-zip", "gif-then-7z",
                        "pdf-then-7z", "jpeg-then-cab", "text-then-zip", "html-then-zip"])
def _polyglot(variant: str) -> bytes:
    """A decoy file that viewers open, with an archive holding the photo glued after it:
    unarchivers find the archive (zip: by its central directory at the end)."""
    pdf_decoy = page_pdf(DRAW, {"Im0": jpeg_xobject(image_bytes(decoy(82), "JPEG"))})
    if variant in ("gif-then-7z", "pdf-then-7z"):
        arc = in_tempdir(files(), [sevenz(), "a", "p.7z", "photo.jpg"], "p.7z")
        if variant == "pdf-then-7z":
            return attach(pdf_decoy + arc, "doc.pdf", "application/pdf")
        first = image_bytes(decoy(81), "GIF")
        return attach(first + arc, "picture.gif", "image/gif")
    if variant == "jpeg-then-cab":
        cab = in_tempdir(files(), ["gcab", "-c", "-z", "p.cab", "photo.jpg"], "p.cab")
        return attach(image_bytes(decoy(84), "JPEG") + cab, "picture.jpg", "image/jpeg")
    arc = zip_of(files())
    if variant in ("text-then-zip", "html-then-zip"):
        # Over 4 KiB of text before the archive: a reader that sniffs the start sees text.
        if variant == "text-then-zip":
            prefix = b"Meeting notes, line %d.\r\n"
            first = b"".join(prefix % i for i in range(300))
            return mixed([TEXT, part(b'text/plain; name="notes.zip"', b64(first + arc),
                                     extra=b'Content-Disposition: attachment; '
                                           b'filename="notes.zip"\r\n')])
        first = b"<html><body>" + b"<p>paragraph</p>\r\n" * 300 + b"</body></html>\r\n"
        return mixed([TEXT, part(b'text/html; name="page.zip"', b64(first + arc),
                                 extra=b'Content-Disposition: attachment; '
                                       b'filename="page.zip"\r\n')])
    if variant == "pdf-then-zip":
        return attach(pdf_decoy + arc, "doc.pdf", "application/pdf")
    fmt = "JPEG" if variant == "jpeg-then-zip" else "PNG"
    first = image_bytes(decoy(83), fmt)
    return attach(first + arc, f"picture.{fmt.lower()}", f"image/{fmt.lower()}")


@construction("wrapped-twice", "containers",
              variants=["html-gz", "svgz", "openpgp-literal-zip", "tnef-zip", "rtf-pict-bin"])
def _wrapped_twice(variant: str) -> bytes:
    if variant == "html-gz":
        return attach(gzip.compress(img_html(data_uri()).encode()), "page.html.gz")
    if variant == "svgz":
        svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480"><image href="'
               + data_uri() + '" width="640" height="480"/></svg>')
        return attach(gzip.compress(svg.encode()), "picture.svgz", "image/svg+xml")
    if variant == "openpgp-literal-zip":
        return attach(gpg_store(zip_of(files())), "photos.zip.gpg")
    if variant == "tnef-zip":
        return attach(tnef(zip_of(files())), "winmail.dat", "application/ms-tnef")
    rtf = (b"{\\rtf1\\ansi Photo:\\par{\\pict\\jpegblip\\picw640\\pich480\\bin%d " % len(photo())
           + photo() + b"}\\par}")
    return attach(rtf, "doc.rtf", "application/rtf")


@construction("delimiter-games", "headers",
              variants=["part-after-close-delimiter", "inner-same-boundary",
                        "boundary-regex-chars", "boundary-trailing-space-quoted"])
def _delimiter_games(variant: str) -> bytes:
    if variant == "part-after-close-delimiter":
        body = (multipart_body(b"B", [TEXT]) + b"--B" + CRLF + photo_part() + CRLF
                + b"--B--" + CRLF)
        return message(b'Content-Type: multipart/mixed; boundary="B"\r\n', body)
    if variant == "inner-same-boundary":
        inner = (b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
                 + multipart_body(b"B", [photo_part()]))
        return message(b'Content-Type: multipart/mixed; boundary="B"\r\n',
                       multipart_body(b"B", [TEXT, inner]))
    if variant == "boundary-regex-chars":
        b = b"a.b*c+?(d)[e]"
        return message(b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n',
                       _photo_body(b))
    return message(b'Content-Type: multipart/mixed; boundary="B "\r\n', _photo_body(b"B "))


@construction("zip-inside-pdf-stream", "containers")
def _zip_in_pdf_stream() -> bytes:
    """A zip as an unused stream near the end of a PDF that draws a decoy: viewers show the
    decoy, unarchivers find the zip by its central directory."""
    arc = zip_of(files())
    doc = page_pdf(DRAW, {"Im0": jpeg_xobject(image_bytes(decoy(85), "JPEG")),
                          "Unused": stream(b"/Type/XObject/Subtype/Form/BBox[0 0 1 1]", arc)})
    return attach_pdf(doc)


@construction("images-even-more", "images",
              variants=["tiff-lzw", "tiff-jpeg", "j2k-codestream", "progressive-cut-at-60-percent"])
def _images_even_more(variant: str) -> bytes:
    img = photo_image()
    if variant == "tiff-lzw":
        data = image_bytes(img, "TIFF", compression="tiff_lzw")
    elif variant == "tiff-jpeg":
        data = image_bytes(img, "TIFF", compression="jpeg")
    elif variant == "j2k-codestream":
        data = image_bytes(img, "JPEG2000", no_jp2=True)
    else:
        full = image_bytes(img, "JPEG", quality=90, progressive=True)
        data = full[: len(full) * 60 // 100]
    return attach(data, "picture.img")


def run_length(data: bytes) -> bytes:
    """PDF RunLengthDecode, literal runs only (length byte n-1, then n bytes; 128 ends)."""
    return b"".join(bytes([len(c) - 1]) + c for c in _chunks(data, 128)) + b"\x80"


@construction("pdf-images-more", "viewer",
              variants=["runlength-raw-rgb", "16-bits-per-component", "iccbased-rgb", "cropbox",
                        "rotate-90", "rc4-40-empty-password"])
def _pdf_images_more(variant: str) -> bytes:
    img = photo_image()
    head = b"/Type/XObject/Subtype/Image/Width %d/Height %d" % (W, H)
    if variant == "runlength-raw-rgb":
        xo = stream(head + b"/ColorSpace/DeviceRGB/BitsPerComponent 8/Filter/RunLengthDecode",
                    run_length(img.tobytes()))
        return attach_pdf(page_pdf(DRAW, {"Im0": xo}))
    if variant == "16-bits-per-component":
        arr = np.asarray(img, np.uint16) * 257
        xo = stream(head + b"/ColorSpace/DeviceRGB/BitsPerComponent 16/Filter/FlateDecode",
                    zlib.compress(arr.astype(">u2").tobytes()))
        return attach_pdf(page_pdf(DRAW, {"Im0": xo}))
    if variant == "iccbased-rgb":
        from PIL import ImageCms
        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        objects = [
            b"<</Type/Catalog/Pages 2 0 R>>",
            b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
            b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Resources<</XObject<</Im0 5 0 R>>>>"
            b"/Contents 4 0 R>>" % (W, H),
            stream(b"", DRAW),
            stream(head + b"/ColorSpace[/ICCBased 6 0 R]/BitsPerComponent 8/Filter/DCTDecode",
                   photo()),
            stream(b"/N 3", profile),
        ]
        return attach_pdf(pdf(objects))
    if variant == "cropbox":
        wide = Image.new("RGB", (2 * W, H))
        wide.paste(img, (0, 0))
        wide.paste(decoy(86), (W, 0))
        content = b"q %d 0 0 %d 0 0 cm /Im0 Do Q" % (2 * W, H)
        objects = [
            b"<</Type/Catalog/Pages 2 0 R>>",
            b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
            b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/CropBox[0 0 %d %d]/Resources"
            b"<</XObject<</Im0 5 0 R>>>>/Contents 4 0 R>>" % (2 * W, H, W, H),
            stream(b"", content),
            jpeg_xobject(image_bytes(wide, "JPEG", quality=92), 2 * W, H),
        ]
        return attach_pdf(pdf(objects))
    if variant == "rotate-90":
        # Stored turned a quarter anticlockwise on a portrait page; /Rotate 90 turns the
        # page clockwise: the viewer shows the photo upright.
        turned = img.transpose(Image.Transpose.ROTATE_90)
        content = b"q %d 0 0 %d 0 0 cm /Im0 Do Q" % (H, W)
        objects = [
            b"<</Type/Catalog/Pages 2 0 R>>",
            b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
            b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Rotate 90/Resources"
            b"<</XObject<</Im0 5 0 R>>>>/Contents 4 0 R>>" % (H, W),
            stream(b"", content),
            jpeg_xobject(image_bytes(turned, "JPEG", quality=92), H, W),
        ]
        return attach_pdf(pdf(objects))
    from pypdf import PdfReader, PdfWriter
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(photo_pdf())))
    writer.encrypt(user_password="", owner_password="owner-secret", algorithm="RC4-40")
    buf = io.BytesIO()
    writer.write(buf)
    return attach_pdf(buf.getvalue())


@construction("gzip-members", "containers", variants=["tar-gz-two-members",
                                                      "jpeg-gz-two-members"])
def _gzip_members(variant: str) -> bytes:
    data = tar_of(files()) if variant.startswith("tar") else photo()
    half = len(data) // 2
    two = gzip.compress(data[:half]) + gzip.compress(data[half:])
    return attach(two, "p.tar.gz" if variant.startswith("tar") else "photo.jpg.gz")


@construction("mime-types-more", "encodings",
              variants=["multipart-digest", "message-partial-total-1", "application-x-uuencode"])
def _mime_types_more(variant: str) -> bytes:
    inner = mixed([TEXT, photo_part()], b"inner-b2")
    if variant == "multipart-digest":
        # In a digest a part without headers is a message/rfc822.
        return message(b'Content-Type: multipart/digest; boundary="D"\r\n',
                       multipart_body(b"D", [CRLF + inner]))
    if variant == "message-partial-total-1":
        return message(b'Content-Type: message/partial; id="p1@test.example"; number=1; '
                       b"total=1\r\n", inner)
    return mixed([TEXT, part(b'application/x-uuencode; name="photo.jpg"', uuencode(photo()),
                             cte=None)])


@construction("split-archive", "containers", variants=["7z-two-volumes"], limit="split-archive")
def _split_archive(variant: str) -> bytes:
    """An archive in volumes, one attachment each: only together do they hold the photo."""
    with tempfile.TemporaryDirectory(prefix="mfdiff-") as tmp:
        d = Path(tmp)
        (d / "photo.jpg").write_bytes(photo())
        run_tool([sevenz(), "a", "-v40k", "-mx=0", "p.7z", "photo.jpg"], cwd=d)
        volumes = sorted(d.glob("p.7z.0*"))
        return mixed([TEXT] + [file_part(v.read_bytes(), v.name) for v in volumes])


@construction("pdf-streams-more", "viewer",
              variants=["inline-image-ahx", "inline-image-in-flate-content", "length-too-short",
                        "length-too-long"])
def _pdf_streams_more(variant: str) -> bytes:
    if variant.startswith("inline-image"):
        if variant == "inline-image-ahx":
            inline = (b"BI /W %d /H %d /CS /RGB /BPC 8 /F [/AHx /DCT] ID\n" % (W, H)
                      + binascii.hexlify(photo()) + b">\nEI")
            content = b"q %d 0 0 %d 0 0 cm " % (W, H) + inline + b" Q"
            return attach_pdf(page_pdf(content, {}))
        content = (b"q %d 0 0 %d 0 0 cm BI /W %d /H %d /CS /RGB /BPC 8 /F /DCT ID\n"
                   % (W, H, W, H) + photo() + b"\nEI Q")
        objects = [
            b"<</Type/Catalog/Pages 2 0 R>>",
            b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
            b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Contents 4 0 R>>" % (W, H),
            stream(b"/Filter/FlateDecode", zlib.compress(content)),
        ]
        return attach_pdf(pdf(objects))
    # A /Length that lies: readers find the data's end by its "endstream".
    xo = jpeg_xobject(photo())
    real = b"/Length %d>>" % len(photo())
    lie = len(photo()) - 5000 if variant == "length-too-short" else len(photo()) + 5000
    return attach_pdf(page_pdf(DRAW, {"Im0": xo.replace(real, b"/Length %d>>" % lie)}))


@construction("css-escapes-everything", "html")
def _css_escape_all() -> bytes:
    escaped = "".join(f"\\{ord(ch):x} " for ch in data_uri())
    return html_message(f'<html><body><div style="background:url({escaped})">x</div>'
                        "</body></html>")


@construction("header-edges", "headers",
              variants=["boundary-star-only", "boundary-escaped-quote", "long-content-type-line",
                        "leading-continuation-line", "utf8-bom-before-headers"])
def _header_edges(variant: str) -> bytes:
    if variant == "boundary-star-only":
        return message(b"Content-Type: multipart/mixed; boundary*=us-ascii''Bstar\r\n",
                       _photo_body(b"Bstar"))
    if variant == "boundary-escaped-quote":
        return message(b'Content-Type: multipart/mixed; boundary="a\\"b"\r\n',
                       _photo_body(b'a"b'))
    if variant == "long-content-type-line":
        return message(b'Content-Type: multipart/mixed; x-pad="' + b"p" * 3000
                       + b'"; boundary="B"\r\n', _photo_body())
    if variant == "leading-continuation-line":
        raw = mixed([TEXT, photo_part()], b"B")
        return b" continued\r\n" + raw
    return b"\xef\xbb\xbf" + mixed([TEXT, photo_part()], b"B")


@construction("html-syntax-edges", "html", variants=["css-image-set-string",
                                                      "slash-separated-attribute"])
def _html_syntax_edges(variant: str) -> bytes:
    if variant == "css-image-set-string":
        return html_message('<html><body><div style="background-image:image-set(\''
                            + data_uri() + '\' 1x)">x</div></body></html>')
    return html_message(f'<html><body><img/src="{data_uri()}"></body></html>')


def lzw_encode(data: bytes) -> bytes:
    """PDF LZWDecode (EarlyChange 1, as TIFF): 9-12 bit codes, clear 256, end 257."""
    out = bytearray()
    acc = 0
    nbits = 0
    width = 9

    def emit(code: int) -> None:
        nonlocal acc, nbits
        acc = (acc << width) | code
        nbits += width
        while nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
        acc &= (1 << nbits) - 1

    table = {bytes([i]): i for i in range(256)}
    next_code = 258
    emit(256)
    w = b""
    for byte in data:
        wc = w + bytes([byte])
        if wc in table:
            w = wc
            continue
        emit(table[w])
        table[wc] = next_code
        next_code += 1
        w = bytes([byte])
        # The decoder's table runs one entry behind: with EarlyChange it widens its codes
        # when its table reaches 2**width - 1, i.e. when ours reaches 2**width.
        if next_code == (1 << width) and width < 12:
            width += 1
        elif next_code >= 4093:
            emit(256)
            table = {bytes([i]): i for i in range(256)}
            next_code = 258
            width = 9
    if w:
        emit(table[w])
    emit(257)
    if nbits:
        out.append((acc << (8 - nbits)) & 0xFF)
    return bytes(out)


@construction("pdf-filters-more", "viewer",
              variants=["flate-png-predictor", "flate-tiff-predictor", "lzw-raw-rgb",
                        "embedded-file-flate", "file-attachment-annotation"])
def _pdf_filters_more(variant: str) -> bytes:
    img = photo_image()
    arr = np.asarray(img, np.uint8)
    head = (b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB"
            b"/BitsPerComponent 8" % (W, H))
    if variant == "flate-png-predictor":
        up = arr.astype(np.int16) - np.vstack([np.zeros((1, W, 3), np.int16), arr[:-1]])
        rows = np.concatenate([np.full((H, 1), 2, np.uint8),
                               (up % 256).astype(np.uint8).reshape(H, W * 3)], axis=1)
        xo = stream(head + b"/Filter/FlateDecode/DecodeParms<</Predictor 12/Colors 3"
                    b"/BitsPerComponent 8/Columns %d>>" % W, zlib.compress(rows.tobytes()))
        return attach_pdf(page_pdf(DRAW, {"Im0": xo}))
    if variant == "flate-tiff-predictor":
        left = np.concatenate([np.zeros((H, 1, 3), np.int16), arr[:, :-1].astype(np.int16)], 1)
        diff = ((arr.astype(np.int16) - left) % 256).astype(np.uint8)
        xo = stream(head + b"/Filter/FlateDecode/DecodeParms<</Predictor 2/Colors 3"
                    b"/BitsPerComponent 8/Columns %d>>" % W, zlib.compress(diff.tobytes()))
        return attach_pdf(page_pdf(DRAW, {"Im0": xo}))
    if variant == "lzw-raw-rgb":
        small = img.resize((320, 240))
        xo = stream(b"/Type/XObject/Subtype/Image/Width 320/Height 240/ColorSpace/DeviceRGB"
                    b"/BitsPerComponent 8/Filter/LZWDecode", lzw_encode(small.tobytes()))
        return attach_pdf(page_pdf(DRAW, {"Im0": xo}))
    ef = stream(b"/Type/EmbeddedFile/Subtype/image#2Fjpeg/Filter/FlateDecode",
                zlib.compress(photo()))
    if variant == "embedded-file-flate":
        objects = [b"<</Type/Catalog/Pages 2 0 R/Names<</EmbeddedFiles<</Names[(photo.jpg) "
                   b"6 0 R]>>>>>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
                   b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Contents 4 0 R>>" % (W, H),
                   stream(b"", b""), ef,
                   b"<</Type/Filespec/F(photo.jpg)/UF(photo.jpg)/EF<</F 5 0 R>>>>"]
        return attach_pdf(pdf(objects))
    objects = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
               b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Contents 4 0 R/Annots[7 0 R]>>"
               % (W, H), stream(b"", b""), ef,
               b"<</Type/Filespec/F(photo.jpg)/UF(photo.jpg)/EF<</F 5 0 R>>>>",
               b"<</Type/Annot/Subtype/FileAttachment/Rect[10 10 30 30]/FS 6 0 R"
               b"/Contents(photo)/Name/PushPin>>"]
    return attach_pdf(pdf(objects))


def with_exif_thumbnail(main: bytes, thumb: bytes) -> bytes:
    """`main` with an APP1 Exif segment whose IFD1 holds `thumb` (a JPEG), the way cameras
    store the preview that file managers show."""
    # TIFF header (little-endian), IFD0 with no entries pointing on to IFD1.
    ifd0_at = 8
    ifd1_at = ifd0_at + 2 + 4
    ifd1 = struct.pack("<H", 2)
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    ifd1 += struct.pack("<HHII", 0x0201, 4, 1, thumb_at)  # JPEGInterchangeFormat
    ifd1 += struct.pack("<HHII", 0x0202, 4, 1, len(thumb))  # ...Length
    ifd1 += struct.pack("<I", 0)
    tiff = b"II*\0" + struct.pack("<I", ifd0_at) + struct.pack("<HI", 0, ifd1_at) + ifd1 + thumb
    body = b"Exif\0\0" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return main[:2] + app1 + main[2:]


@construction("embedded-previews", "viewer", variants=["exif-thumbnail", "mpo-second-image"])
def _embedded_previews(variant: str) -> bytes:
    if variant == "exif-thumbnail":
        thumb = image_bytes(photo_image().resize((160, 120)), "JPEG", quality=85)
        return attach(with_exif_thumbnail(image_bytes(decoy(87), "JPEG"), thumb), "picture.jpg",
                      "image/jpeg")
    buf = io.BytesIO()
    decoy(88).save(buf, "MPO", save_all=True, append_images=[photo_image()], quality=90)
    return attach(buf.getvalue(), "picture.mpo", "image/jpeg")


@construction("rtf-more", "containers", variants=["dibitmap", "shppict-wordpad-style"])
def _rtf_more(variant: str) -> bytes:
    if variant == "dibitmap":
        bmp = image_bytes(photo_image(), "BMP")
        dib = bmp[14:]  # BITMAPINFOHEADER and pixels, without the file header
        hexdata = binascii.hexlify(dib)
        rtf = (b"{\\rtf1\\ansi Photo:\\par{\\pict\\dibitmap0\\picw640\\pich480\\wbmbitspixel24\r\n"
               + b"\r\n".join(_chunks(hexdata, 128)) + b"}\\par}")
    else:
        hexdata = binascii.hexlify(photo()).upper()
        rtf = (b"{\\rtf1\\ansi{\\*\\shppict{\\pict{\\*\\picprop}\\picscalex100\\picscaley100"
               b"\\piccropl0\\piccropr0\\piccropt0\\piccropb0\\picw16933\\pich12700"
               b"\\picwgoal9600\\pichgoal7200\\jpegblip\\bliptag-1{\\*\\blipuid 0123}\r\n"
               + b"\r\n".join(_chunks(hexdata, 64))
               + b"}}{\\nonshppict{\\pict\\wmetafile8\\picw16933\\pich12700 0100}}\\par}")
    return attach(rtf, "doc.rtf", "application/rtf")


@construction("pdf-vector-pixels", "viewer", variants=["64x48", "128x96"])
def _pdf_vector_pixels(variant: str) -> bytes:
    """No image at all: the photo drawn as a grid of filled rectangles, one per pixel of a
    downscaled copy. Only a renderer sees it."""
    cols, rows = (int(v) for v in variant.split("x"))
    small = np.asarray(photo_image().resize((cols, rows)), np.uint8)
    cw, ch = W / cols, H / rows
    ops = []
    for r in range(rows):
        y = H - (r + 1) * ch
        for c in range(cols):
            red, green, blue = (int(v) for v in small[r, c])
            ops.append(f"{red / 255:.3f} {green / 255:.3f} {blue / 255:.3f} rg "
                       f"{c * cw:.2f} {y:.2f} {cw + 0.05:.2f} {ch + 0.05:.2f} re f")
    content = "\n".join(ops).encode()
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Contents 4 0 R>>" % (W, H),
        stream(b"/Filter/FlateDecode", zlib.compress(content)),
    ]
    return attach_pdf(pdf(objects))


@construction("pdf-smask-carries-photo", "viewer")
def _pdf_smask_photo() -> bytes:
    """A black image whose soft mask is the photo's inverted luminance: over a white page
    the viewer draws the photo (in grey); no stored image looks like it."""
    luma = np.asarray(photo_image().convert("L"), np.uint8)
    mask = stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceGray"
                  b"/BitsPerComponent 8/Filter/FlateDecode" % (W, H),
                  zlib.compress((255 - luma).tobytes()))
    black = stream(b"/Type/XObject/Subtype/Image/Width 8/Height 8/ColorSpace/DeviceRGB"
                   b"/BitsPerComponent 8/SMask 6 0 R/Filter/FlateDecode",
                   zlib.compress(b"\0" * 192))
    return attach_pdf(page_pdf(DRAW, {"Im0": black, "Mask": mask}))


@construction("pdf-blend-layers", "viewer", variants=["difference", "multiply"])
def _pdf_blend_layers(variant: str) -> bytes:
    """Two layers, each a mixture of the photo and a decoy, that a blend mode combines
    into the photo: no stored image is the photo, the page a viewer draws is."""
    p = np.asarray(photo_image(), np.float64) / 255
    d = np.asarray(decoy(89), np.float64) / 255
    if variant == "difference":
        under = 0.5 * d
        over = under + 0.5 * p  # |over - under| = photo / 2
    else:
        under = 0.75 + 0.25 * d  # in [0.75, 1]
        over = 0.75 * p / under  # over * under = 0.75 * photo
    mode = b"/Difference" if variant == "difference" else b"/Multiply"

    def raw(layer: np.ndarray) -> bytes:
        return stream(b"/Type/XObject/Subtype/Image/Width %d/Height %d/ColorSpace/DeviceRGB"
                      b"/BitsPerComponent 8/Filter/FlateDecode" % (W, H),
                      zlib.compress(np.clip(layer * 255 + 0.5, 0, 255).astype(np.uint8)
                                    .tobytes()))
    content = (b"q %d 0 0 %d 0 0 cm /Im0 Do Q q /GS0 gs %d 0 0 %d 0 0 cm /Im1 Do Q"
               % (W, H, W, H))
    return attach_pdf(_pdf_with(content, [raw(under), raw(over)],
                                b"/XObject<</Im0 5 0 R/Im1 6 0 R>>/ExtGState<</GS0<</BM " + mode
                                + b">>>>"))


@construction("header-syntax-more", "headers",
              variants=["indented-delimiters", "missing-semicolon", "spaces-around-equals",
                        "no-content-type-part", "cr-only-part-headers"])
def _header_syntax_more(variant: str) -> bytes:
    if variant == "indented-delimiters":
        body = _photo_body().replace(b"\r\n--B", b"\r\n  --B")
        return message(b'Content-Type: multipart/mixed; boundary="B"\r\n', body)
    if variant == "missing-semicolon":
        return message(b'Content-Type: multipart/mixed\r\n boundary="B"\r\n', _photo_body())
    if variant == "spaces-around-equals":
        return message(b'Content-Type: multipart/mixed; boundary = "B"\r\n', _photo_body())
    if variant == "no-content-type-part":
        img = (b"Content-Transfer-Encoding: base64\r\n"
               b'Content-Disposition: attachment; filename="photo.jpg"\r\n\r\n' + b64(photo()))
        return mixed([TEXT, img])
    img = photo_part()
    head, _, body = img.partition(b"\r\n\r\n")
    return mixed([TEXT, head.replace(b"\r\n", b"\r") + b"\r\r" + body])


@construction("archive-variants", "containers",
              variants=["tar-v7", "tar-pax", "tar-gnu", "7z-delta", "7z-bcj2", "7z-arm64",
                        "7z-lzma1"])
def _archive_variants(variant: str) -> bytes:
    kind, form = variant.split("-", 1)
    if kind == "tar":
        fmt = {"v7": "v7", "pax": "pax", "gnu": "gnutar"}[form]
        data = in_tempdir(files(), ["bsdtar", "-cf", "p.tar", "--format", fmt, "photo.jpg"],
                          "p.tar")
        return attach(data, "p.tar")
    methods = {"delta": ["-m0=Delta:4", "-m1=LZMA2"], "bcj2": ["-mf=BCJ2"],
               "arm64": ["-mf=ARM64"], "lzma1": ["-m0=LZMA"]}[form]
    data = in_tempdir(files(), [sevenz(), "a", *methods, "p.7z", "photo.jpg"], "p.7z")
    return attach(data, "p.7z")


@construction("alpha-carries-photo", "viewer", variants=["png", "webp", "tiff"])
def _alpha_carries_photo(variant: str) -> bytes:
    """Black pixels whose opacity is the photo's inverted luminance: drawn over a white
    page (as mail clients do) they show the photo in grey; the colour channels are black."""
    luma = np.asarray(photo_image().convert("L"), np.uint8)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = 255 - luma
    img = Image.fromarray(rgba, "RGBA")
    fmt = {"png": "PNG", "webp": "WEBP", "tiff": "TIFF"}[variant]
    extra: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    return attach(image_bytes(img, fmt, **extra), f"picture.{variant}", f"image/{variant}")


@construction("ico-smaller-entry", "viewer")
def _ico_smaller_entry() -> bytes:
    """An icon whose 256 px entry is a decoy and whose 128 x 96 entry is the photo: file
    managers pick the entry nearest their icon size."""
    big = image_bytes(decoy(90).resize((256, 256)), "PNG")
    small = image_bytes(photo_image().resize((128, 96)), "PNG")
    entries = [(256, 256, big), (128, 96, small)]
    out = struct.pack("<HHH", 0, 1, len(entries))
    offset = 6 + 16 * len(entries)
    for w, h, data in entries:
        out += struct.pack("<BBBBHHII", w % 256, h % 256, 0, 0, 1, 32, len(data), offset)
        offset += len(data)
    return attach(out + b"".join(d for _, _, d in entries), "icon.ico", "image/x-icon")


def wmf_stretchdib(img: Image.Image, dibstretchblt: bool = False) -> bytes:
    """A Windows metafile with one META_STRETCHDIB record (MS-WMF 2.3.1.3), or one
    META_DIBSTRETCHBLT record (2.3.1.2), drawing `img`."""
    dib = image_bytes(img, "BMP")[14:]
    w, h = img.size
    if dibstretchblt:
        params = struct.pack("<Ihhhhhhhh", 0x00CC0020, h, w, 0, 0, h, w, 0, 0)
        function = 0x0B41
    else:
        params = struct.pack("<IHhhhhhhhh", 0x00CC0020, 0, h, w, 0, 0, h, w, 0, 0)
        function = 0x0F43
    body = params + dib + b"\0" * (len(dib) % 2)
    record = struct.pack("<IH", (6 + len(body)) // 2, function) + body
    eof = struct.pack("<IH", 3, 0)
    size_words = (18 + len(record) + len(eof)) // 2
    header = struct.pack("<HHHIHIH", 1, 9, 0x0300, size_words, 0, len(record) // 2, 0)
    return header + record + eof


@construction("windows-metafile", "containers",
              variants=["rtf-wmetafile", "wmf-attachment", "wmf-dibstretchblt"])
def _windows_metafile(variant: str) -> bytes:
    wmf = wmf_stretchdib(photo_image().resize((320, 240)), variant == "wmf-dibstretchblt")
    if variant == "wmf-dibstretchblt":
        return attach(wmf, "picture.wmf", "image/wmf")
    if variant == "wmf-attachment":
        # With the "placeable" header that .wmf files carry (bounding box, 1440 units/inch).
        placeable = struct.pack("<IHhhhhHI", 0x9AC6CDD7, 0, 0, 0, 320, 240, 96, 0)
        checksum = 0
        for (word,) in struct.iter_unpack("<H", placeable[:20]):
            checksum ^= word
        placeable = placeable[:20] + struct.pack("<H", checksum)
        return attach(placeable + wmf, "picture.wmf", "image/wmf")
    hexdata = binascii.hexlify(wmf)
    rtf = (b"{\\rtf1\\ansi Photo:\\par{\\pict\\wmetafile8\\picw8467\\pich6350\\picwgoal4800"
           b"\\pichgoal3600\r\n" + b"\r\n".join(_chunks(hexdata, 128)) + b"}\\par}")
    return attach(rtf, "doc.rtf", "application/rtf")


def emf_stretchdibits(img: Image.Image, stretchblt: bool = False) -> bytes:
    """An enhanced metafile with one EMR_STRETCHDIBITS record (MS-EMF 2.3.1.7), or one
    EMR_STRETCHBLT record (2.3.1.6), drawing `img`."""
    dib = image_bytes(img, "BMP")[14:]
    bmi, bits = dib[:40], dib[40:]
    w, h = img.size
    bounds = struct.pack("<4i", 0, 0, w - 1, h - 1)
    if stretchblt:
        fixed = 108
        record = (struct.pack("<II", 77, fixed + len(dib)) + bounds
                  + struct.pack("<4iI2i", 0, 0, w, h, 0x00CC0020, 0, 0)
                  + struct.pack("<6f", 1, 0, 0, 1, 0, 0) + struct.pack("<II", 0, 0)
                  + struct.pack("<4I", fixed, len(bmi), fixed + len(bmi), len(bits))
                  + struct.pack("<2i", w, h) + dib)
    else:
        fixed = 80
        record = (struct.pack("<II", 81, fixed + len(dib)) + bounds
                  + struct.pack("<6i", 0, 0, 0, 0, w, h)
                  + struct.pack("<6I", fixed, len(bmi), fixed + len(bmi), len(bits), 0,
                                0x00CC0020)
                  + struct.pack("<2i", w, h) + dib)
    eof = struct.pack("<5I", 14, 20, 0, 16, 20)
    total = 88 + len(record) + len(eof)
    header = (struct.pack("<II", 1, 88) + struct.pack("<4i", 0, 0, w - 1, h - 1)
              + struct.pack("<4i", 0, 0, w * 26, h * 26)
              + struct.pack("<IIIIHHIII", 0x464D4520, 0x10000, total, 3, 1, 0, 0, 0, 0)
              + struct.pack("<4i", 1920, 1080, 508, 286))
    return header + record + eof


@construction("enhanced-metafile", "containers",
              variants=["emf-attachment", "emf-in-docx", "emf-stretchblt"])
def _enhanced_metafile(variant: str) -> bytes:
    emf = emf_stretchdibits(photo_image().resize((320, 240)), variant == "emf-stretchblt")
    if variant == "emf-stretchblt":
        return attach(emf, "picture.emf", "image/emf")
    if variant == "emf-attachment":
        return attach(emf, "picture.emf", "image/emf")
    z = zip_of({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>",
                "word/media/image1.emf": emf})
    return attach(z, "doc.docx",
                  "application/vnd.openxmlformats-officedocument.wordprocessingml.document")


@construction("eps-tiff-preview", "containers")
def _eps_preview() -> bytes:
    """A DOS EPS: PostScript drawing nothing, plus the TIFF preview that Office and other
    page-layout programs show in its place."""
    ps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 640 480\nnewpath 0 0 moveto "
          b"showpage\n%%EOF\n")
    tiff = image_bytes(photo_image(), "TIFF")
    ps_at = 30
    tiff_at = ps_at + len(ps)
    header = struct.pack("<IIIIIIIH", 0xC6D3D0C5, ps_at, len(ps), 0, 0, tiff_at, len(tiff),
                         0xFFFF)
    return attach(header + ps + tiff, "figure.eps", "application/postscript")


@construction("markup-labelled-text", "html", variants=["html-file", "svg-file"])
def _markup_labelled_text(variant: str) -> bytes:
    """A page or drawing sent as text/plain under its real name: saved and opened, the
    browser draws it."""
    if variant == "html-file":
        data, name = img_html(data_uri()).encode(), "page.html"
    else:
        data = ('<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480"><image href="'
                + data_uri() + '" width="640" height="480"/></svg>').encode()
        name = "drawing.svg"
    return mixed([TEXT, part(b'text/plain; charset=us-ascii; name="' + name.encode() + b'"',
                             b64(data), extra=b'Content-Disposition: attachment; filename="'
                             + name.encode() + b'"\r\n')])


@construction("pdf-inherited-resources", "viewer")
def _pdf_inherited_resources() -> bytes:
    """The page has no /Resources of its own: it inherits them from a Pages node two levels
    up (PDF 32000 7.7.3.4)."""
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1/Resources<</XObject<</Im0 6 0 R>>>>"
        b"/MediaBox[0 0 %d %d]>>" % (W, H),
        b"<</Type/Pages/Parent 2 0 R/Kids[4 0 R]/Count 1>>",
        b"<</Type/Page/Parent 3 0 R/Contents 5 0 R>>",
        stream(b"", DRAW),
        jpeg_xobject(photo()),
    ]
    return attach_pdf(pdf(objects))


@construction("openpgp-symmetric", "limits", variants=["binary", "armored"], limit="password")
def _pgp_symmetric(variant: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mfdiff-gpg-") as home:
        args = ["gpg", "--batch", "--homedir", home, "--pinentry-mode", "loopback",
                "--passphrase", PASSWORD, "--symmetric", "-o", "-"]
        if variant == "armored":
            args.insert(4, "--armor")
        data = in_tempdir({}, args, "-", stdin=photo())
    if variant == "armored":
        return mixed([PASSWORD_TEXT, part(b"text/plain", data, cte=b"7bit")])
    return mixed([PASSWORD_TEXT, file_part(data, "photo.jpg.gpg")])


@construction("zip-900-members-then-photo", "limits")
def _zip_900_members() -> bytes:
    """Under the member limit (1000): the photo after 900 members must be reached."""
    members = {f"f{i:03d}.txt": b"x\n" for i in range(900)}
    members["zz/photo.jpg"] = photo()
    return attach(zip_of(members), "p.zip")


@construction("encoding-edges-more", "encodings",
              variants=["qp-lowercase-hex", "qp-bare-lf-soft-breaks", "base64-url-safe-alphabet"])
def _encoding_edges_more(variant: str) -> bytes:
    if variant == "qp-lowercase-hex":
        body = re.sub(rb"=([0-9A-F]{2})", lambda m: b"=" + m.group(1).lower(),
                      quoted_printable(photo()))
        return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"', body, cte=b"quoted-printable")])
    if variant == "qp-bare-lf-soft-breaks":
        body = quoted_printable(photo()).replace(b"=\r\n", b"=\n")
        return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"', body, cte=b"quoted-printable")])
    enc = base64.urlsafe_b64encode(photo())
    return mixed([TEXT, part(b'image/jpeg; name="photo.jpg"', CRLF.join(_chunks(enc, 76)) + CRLF)])


@construction("zip-odd-names", "containers", variants=["dot-dot", "absolute", "backslashes"])
def _zip_odd_names(variant: str) -> bytes:
    """Entry names that extractors sanitise (or refuse) but whose data they still hold."""
    name = {"dot-dot": "../../photo.jpg", "absolute": "/tmp/photo.jpg",
            "backslashes": "dir\\\\sub\\\\photo.jpg"}[variant]
    return attach(zip_of({name: photo()}), "p.zip")


def id3_with_cover(picture: bytes, unsynchronise: bool, compress: bool = False) -> bytes:
    """An ID3v2.3 tag with an APIC (front cover) frame, optionally unsynchronised (every
    0xFF followed by a 0x00, undone by players) or zlib-compressed (frame flag 0x0080,
    ID3v2.3 3.3.1), then one silent MPEG-1 Layer III frame."""
    apic = b"\0" + b"image/jpeg\0" + b"\x03" + b"cover\0" + picture
    frame_flags = b"\0\0"
    if compress:
        apic = struct.pack(">I", len(apic)) + zlib.compress(apic)
        frame_flags = b"\0\x80"
    frames = b"APIC" + struct.pack(">I", len(apic)) + frame_flags + apic
    flags = 0
    if unsynchronise:
        frames = re.sub(rb"\xff(?=[\x00\xe0-\xff])|\xff$", b"\xff\x00", frames)
        flags = 0x80
    size = len(frames)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    mpeg_frame = b"\xff\xfb\x90\x64" + b"\0" * 413
    return b"ID3\x03\x00" + bytes([flags]) + syncsafe + frames + mpeg_frame


@construction("audio-cover-art", "containers",
              variants=["mp3-id3", "mp3-id3-unsynchronised", "mp3-id3-compressed-frame",
                        "flac-picture"])
def _audio_cover(variant: str) -> bytes:
    """Cover art, which players and file managers show for a music file."""
    if variant == "flac-picture":
        streaminfo = struct.pack(">HH", 4096, 4096) + b"\0" * 6 + bytes.fromhex(
            "0ac44" "0f0000000" "00") + b"\0" * 16
        streaminfo = streaminfo[:34].ljust(34, b"\0")
        pic = (struct.pack(">I", 3) + struct.pack(">I", 10) + b"image/jpeg"
               + struct.pack(">I", 0) + struct.pack(">IIII", W, H, 24, 0)
               + struct.pack(">I", len(photo())) + photo())
        flac = (b"fLaC" + bytes([0]) + len(streaminfo).to_bytes(3, "big") + streaminfo
                + bytes([0x80 | 6]) + len(pic).to_bytes(3, "big") + pic)
        return attach(flac, "song.flac", "audio/flac")
    data = id3_with_cover(photo(), variant.endswith("unsynchronised"),
                          variant.endswith("compressed-frame"))
    return attach(data, "song.mp3", "audio/mpeg")


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def ogg_pages(packets: list[bytes], serial: int = 1, segments_per_page: int = 16) -> bytes:
    """Ogg pages (RFC 3533) carrying `packets`, each packet starting a page (as RFC 7845
    wants for Opus headers) and split over several pages where it is long: readers join
    it back."""
    out = b""
    seq = 0
    for number, packet in enumerate(packets):
        pieces = [packet[i:i + 255] for i in range(0, len(packet), 255)] or [b""]
        if len(pieces[-1]) == 255:
            pieces.append(b"")
        for start in range(0, len(pieces), segments_per_page):
            chunk = pieces[start:start + segments_per_page]
            flags = (0x01 if start else 0) | (0x02 if seq == 0 else 0)
            if number == len(packets) - 1 and start + segments_per_page >= len(pieces):
                flags |= 0x04
            header = (b"OggS\0" + bytes([flags]) + struct.pack("<qII", 0, serial, seq)
                      + b"\0" * 4 + bytes([len(chunk)]) + bytes(len(p) for p in chunk))
            page = header + b"".join(chunk)
            out += page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]
            seq += 1
    return out


@construction("ogg-opus-cover-art", "containers")
def _ogg_opus_cover() -> bytes:
    """An Opus file whose tags hold the cover picture (METADATA_BLOCK_PICTURE: a FLAC
    picture block in base64), split over Ogg pages as players read it back."""
    pic = (struct.pack(">I", 3) + struct.pack(">I", 10) + b"image/jpeg" + struct.pack(">I", 0)
           + struct.pack(">IIII", W, H, 24, 0) + struct.pack(">I", len(photo())) + photo())
    comment = b"METADATA_BLOCK_PICTURE=" + base64.b64encode(pic)
    vendor = b"mailfilter-test"
    tags = (b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 1)
            + struct.pack("<I", len(comment)) + comment)
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)
    return attach(ogg_pages([head, tags]), "song.opus", "audio/ogg")
