"""Every plausible reading (issue 15): where MIME parsers disagree about a message, the walk
scans each reading and takes the union; each disagreement is recorded as an ambiguity.

Every construction below hides one benign generated JPEG from the reading the walk used to
make, while a reference program (ripmime, munpack, reformime, mu/GMime, Python's `email`)
shows it; the test asserts that `extract` returns an attachment whose bytes equal the JPEG,
and, where the program is installed, that some reference program really shows it.
"""

from __future__ import annotations

import base64
import email
import email.policy
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from factories import jpeg

from mailfilter.extract import extract
from mailfilter.model import Extraction
from mailfilter.settings import ExtractSettings

LIMITS = ExtractSettings()
PHOTO = jpeg(15, 160, 120)
HEAD = (
    b"From: Alice <alice@example.org>\n"
    b"To: Bob <bob@example.org>\n"
    b"Subject: photo\n"
    b"Message-ID: <readings@example.org>\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
    b"MIME-Version: 1.0\n"
)


def b64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\n"


def image_part(cte_lines: bytes = b"Content-Transfer-Encoding: base64\n") -> bytes:
    return (
        b'Content-Type: image/jpeg; name="photo.jpg"\n' + cte_lines
        + b'Content-Disposition: attachment; filename="photo.jpg"\n\n' + b64(PHOTO)
    )


TEXT_PART = b"Content-Type: text/plain\n\nHello.\n"


def body(boundary: bytes, parts: list[bytes], close: bytes | None = None) -> bytes:
    out = b"\nThis is a multi-part message in MIME format.\n"
    for p in parts:
        out += b"--" + boundary + b"\n" + p + b"\n"
    return out + b"--" + (boundary if close is None else close) + b"--\n"


# --- constructions -----------------------------------------------------------------------


def big_header_block() -> bytes:
    """300 KiB of ordinary header lines before Content-Type."""
    filler = b"".join(b"X-Filler-%06d: %s\n" % (i, b"a" * 60) for i in range(4400))
    return (HEAD + filler + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b"B", [TEXT_PART, image_part()]))


def long_header_line() -> bytes:
    """One 1 MB header line before Content-Type."""
    return (HEAD + b"X-Junk: " + b"j" * (1 << 20) + b"\n"
            + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b"B", [TEXT_PART, image_part()]))


def duplicate_content_type_last() -> bytes:
    """A text/plain first, the multipart second (readers that take the last one split it)."""
    return (HEAD + b"Content-Type: text/plain\n"
            + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b"B", [TEXT_PART, image_part()]))


def duplicate_content_type_first() -> bytes:
    """Two multipart types with different boundaries: a decoy under the first, the photo
    under the second."""
    inner = body(b"B", [TEXT_PART, image_part()])
    return (HEAD + b'Content-Type: multipart/mixed; boundary="A"\n'
            + b'Content-Type: multipart/mixed; boundary="B"\n'
            + b"\n--A\nContent-Type: text/plain\n\nHello.\n" + inner + b"--A--\n")


def duplicate_boundary() -> bytes:
    return (HEAD + b'Content-Type: multipart/mixed; boundary="A"; boundary="B"\n'
            + b"\n--A\nContent-Type: text/plain\n\nHello.\n"
            + body(b"B", [TEXT_PART, image_part()]) + b"--A--\n")


def comments_in_content_type() -> bytes:
    return (HEAD + b'Content-Type: (c) multipart/mixed; boundary=(c)"B"\n'
            + body(b"B", [TEXT_PART, image_part()]))


def line_without_colon() -> bytes:
    return (HEAD + b"this line has no colon\n"
            + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b"B", [TEXT_PART, image_part()]))


def non_ascii_header_name() -> bytes:
    return (HEAD + "X-Ünïcode-Näme: value\n".encode()
            + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b"B", [TEXT_PART, image_part()]))


def two_transfer_encodings() -> bytes:
    cte = b"Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64\n"
    return (HEAD + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b"B", [TEXT_PART, image_part(cte)]))


def boundary_case() -> bytes:
    return (HEAD + b'Content-Type: multipart/mixed; boundary="photo-boundary"\n'
            + body(b"PHOTO-BOUNDARY", [TEXT_PART, image_part()]))


def rfc2231_boundary() -> bytes:
    return (HEAD + b"Content-Type: multipart/mixed; boundary=\"A\"; boundary*=us-ascii''B\n"
            + b"\n--A\nContent-Type: text/plain\n\nHello.\n"
            + body(b"B", [TEXT_PART, image_part()]) + b"--A--\n")


def encoded_word_boundary() -> bytes:
    return (HEAD + b'Content-Type: multipart/mixed; boundary="=?us-ascii?Q?B?="\n'
            + body(b"B", [TEXT_PART, image_part()]))


def delimiter_junk(junk: bytes) -> Callable[[], bytes]:
    def build() -> bytes:
        raw = body(b"B", [TEXT_PART, image_part()])
        raw = raw.replace(b"--B\n", b"--B" + junk + b"\n")
        return HEAD + b'Content-Type: multipart/mixed; boundary="B"\n' + raw
    build.__name__ = f"delimiter_junk_{junk!r}"
    return build


def cr_line_ends() -> bytes:
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="B"\n' + body(
        b"B", [TEXT_PART, image_part()])
    return raw.replace(b"\n", b"\r")


def multipart_with_transfer_encoding() -> bytes:
    """A multipart that declares quoted-printable (RFC 2045: ignore it); decoding it turns
    the delimiters `--b=3Dx` into `--b=x` and loses the parts."""
    return (HEAD + b'Content-Type: multipart/mixed; boundary="b=3Dx"\n'
            + b"Content-Transfer-Encoding: quoted-printable\n"
            + body(b"b=3Dx", [TEXT_PART, image_part()]))


def _saved_message() -> bytes:
    return (HEAD + b'Content-Type: multipart/mixed; boundary="in"\n'
            + body(b"in", [TEXT_PART, image_part()]))


def message_as_text() -> bytes:
    """A forwarded .eml attached as text/plain without a name (ripmime shows its parts)."""
    return (HEAD + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b"B", [TEXT_PART, b"Content-Type: text/plain\n"
                          b"Content-Disposition: attachment\n\n" + _saved_message()]))


def message_as_text_body() -> bytes:
    """A message whose text/plain body is a whole message (munpack shows its parts)."""
    return HEAD + b"Content-Type: text/plain\n\n" + _saved_message()


# (construction, the ambiguity code it must be recorded under)
CONSTRUCTIONS: list[tuple[Callable[[], bytes], str]] = [
    (big_header_block, "header-block-limit"),
    (long_header_line, "header-block-limit"),
    (duplicate_content_type_last, "duplicate-content-type"),
    (duplicate_content_type_first, "duplicate-content-type"),
    (duplicate_boundary, "duplicate-boundary"),
    (comments_in_content_type, "content-type-syntax"),
    (line_without_colon, "malformed-header-line"),
    (non_ascii_header_name, "malformed-header-line"),
    (two_transfer_encodings, "duplicate-transfer-encoding"),
    (boundary_case, "boundary-case"),
    (rfc2231_boundary, "boundary-rfc2231"),
    (encoded_word_boundary, "boundary-encoded-word"),
    (delimiter_junk(b";x"), "delimiter-junk"),
    (delimiter_junk(b" junk"), "delimiter-junk"),
    (cr_line_ends, "cr-line-ends"),
    (multipart_with_transfer_encoding, "multipart-with-transfer-encoding"),
    (message_as_text, "message-as-text"),
    (message_as_text_body, "message-as-text"),
]
IDS = [build.__name__ for build, _code in CONSTRUCTIONS]


# --- reference programs -------------------------------------------------------------------


def _files(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()]


def _run_on_file(raw: bytes, argv: Callable[[Path, Path], list[str]]) -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        msg, out = Path(tmp, "m.eml"), Path(tmp, "out")
        msg.write_bytes(raw)
        out.mkdir()
        subprocess.run(argv(msg, out), capture_output=True, timeout=30, check=False,
                       cwd=tmp)
        return _files(out)


def _ripmime(raw: bytes) -> list[bytes]:
    return _run_on_file(raw, lambda m, o: ["ripmime", "-i", str(m), "-d", str(o)])


def _munpack(raw: bytes) -> list[bytes]:
    return _run_on_file(raw, lambda m, o: ["munpack", "-f", "-q", "-t", "-C", str(o), str(m)])


def _mu(raw: bytes) -> list[bytes]:
    return _run_on_file(raw, lambda m, o: [
        "mu", "extract", "--save-all", "--overwrite", f"--target-dir={o}",
        f"--muhome={o.parent / 'muhome'}", str(m)])


def _reformime(raw: bytes) -> list[bytes]:
    info = subprocess.run(["reformime", "-i"], input=raw, capture_output=True, timeout=30,
                          check=False).stdout.decode("latin-1")
    sections = [line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("section:")]
    return [subprocess.run(["reformime", "-e", "-s", s], input=raw, capture_output=True,
                           timeout=30, check=False).stdout for s in sections]


def _python_email(policy: email.policy.Policy) -> Callable[[bytes], list[bytes]]:
    def leaves(raw: bytes) -> list[bytes]:
        msg = email.message_from_bytes(raw, policy=policy)
        out: list[bytes] = []
        for part in msg.walk():
            if not part.is_multipart():
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    out.append(payload)
        return out
    return leaves


# name -> (program that must be installed, or None, reader)
REFERENCES: dict[str, tuple[str | None, Callable[[bytes], list[bytes]]]] = {
    "python-email-default": (None, _python_email(email.policy.default)),
    "python-email-compat32": (None, _python_email(email.policy.compat32)),
    "ripmime": ("ripmime", _ripmime),
    "munpack": ("munpack", _munpack),
    "reformime": ("reformime", _reformime),
    "mu (GMime)": ("mu", _mu),
}


def shown_by(raw: bytes, data: bytes) -> tuple[list[str], list[str]]:
    """(the reference programs that show `data` as a part of `raw`, those not installed)."""
    shown, missing = [], []
    for name, (program, read) in REFERENCES.items():
        if program is not None and shutil.which(program) is None:
            missing.append(name)
            continue
        if data in read(raw):
            shown.append(name)
    return shown, missing


# --- the photo is found, and the disagreement recorded -----------------------------------


def run(raw: bytes) -> Extraction:
    return extract(raw, LIMITS)


def codes(ex: Extraction) -> set[str]:
    return {entry.split(" at ", 1)[0] for entry in ex.ambiguities}


def found_as_a_part(ex: Extraction) -> bool:
    """The photo is a MIME part of some reading (`2`, `~2/2`, `2~2`, `2.2`), not only a
    base64 run found in text (the text sweep may find that too: it proves nothing here)."""
    return any(a.data == PHOTO and all(seg[:1].isdigit() or seg[:1] == "~"
                                       for seg in a.mime_path.split("/"))
               for a in ex.attachments)


@pytest.mark.parametrize(("build", "code"), CONSTRUCTIONS, ids=IDS)
def test_every_reading_is_scanned(build: Callable[[], bytes], code: str) -> None:
    ex = run(build())
    assert found_as_a_part(ex), [(a.mime_path, a.data == PHOTO) for a in ex.attachments]
    assert code in codes(ex), ex.ambiguities
    assert not ex.unscannable, ex.unscannable


@pytest.mark.parametrize(("build", "code"), CONSTRUCTIONS, ids=IDS)
def test_a_reference_program_shows_the_photo(build: Callable[[], bytes], code: str) -> None:
    """The construction is real: some reader shows the photo (else it would prove nothing)."""
    shown, missing = shown_by(build(), PHOTO)
    if not shown and missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    assert shown


# --- more constructions, the same promise --------------------------------------------------


def boundary_case_after_decoy() -> bytes:
    """A decoy text part (full of dashes, as signatures and tables are) under the declared
    boundary; the photo's delimiter is in another case (reformime splits there)."""
    decoy = b"Content-Type: text/plain\n\nHello.\n" + b"-- \n" + b"----- table -----\n" * 300
    return (HEAD + b'Content-Type: multipart/mixed; boundary="photo-boundary"\n'
            + b"\n--photo-boundary\n" + decoy
            + b"--PHOTO-BOUNDARY\n" + image_part() + b"--photo-boundary--\n")


def multipart_transfer_encoding_hides_a_delimiter() -> bytes:
    """A quoted-printable multipart: the photo's delimiter is `--b=3Dx`, which only a reader
    that decodes the multipart takes for `--b=x` (ripmime does)."""
    return (HEAD + b'Content-Type: multipart/mixed; boundary="b=x"\n'
            + b"Content-Transfer-Encoding: quoted-printable\n"
            + b"\n--b=x\nContent-Type: text/plain\n\nHello.\n"
            + b"--b=3Dx\n" + image_part() + b"--b=3Dx--\n--b=x--\n")


def cr_line_ends_in_a_part() -> bytes:
    """Ordinary line ends around a part whose headers and inner delimiters use lone CRs."""
    inner = (b'Content-Type: multipart/mixed; boundary="in"\n'
             + body(b"in", [TEXT_PART, image_part()])).replace(b"\n", b"\r")
    return (HEAD + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b"B", [TEXT_PART, inner]))


def boundary_after_a_missing_semicolon() -> bytes:
    """`multipart/mixed boundary="B"`: no parameter to a strict parser, which guesses the
    boundary from the first delimiter-like line (a decoy); munpack and ripmime find B."""
    return (HEAD + b'Content-Type: multipart/mixed boundary="B"\n'
            + b"\n--X\nContent-Type: text/plain\n\nhi\n--X\nContent-Type: text/plain\n\nho\n"
            + body(b"B", [TEXT_PART, image_part()]) + b"--X--\n")


def boundary_quotes_in_the_delimiters() -> bytes:
    """boundary="B", delimiters `--"B"` (ripmime takes the quotes as part of it)."""
    return (HEAD + b'Content-Type: multipart/mixed; boundary="B"\n'
            + body(b'"B"', [TEXT_PART, image_part()]))


def boundary_in_single_quotes() -> bytes:
    return (HEAD + b"Content-Type: multipart/mixed; boundary='B'\n"
            + body(b"B", [TEXT_PART, image_part()]))


MORE: list[tuple[Callable[[], bytes], str]] = [
    (boundary_after_a_missing_semicolon, "content-type-syntax"),
    (boundary_quotes_in_the_delimiters, "content-type-syntax"),
    (boundary_in_single_quotes, "content-type-syntax"),
    (boundary_case_after_decoy, "boundary-case"),
    (multipart_transfer_encoding_hides_a_delimiter, "multipart-with-transfer-encoding"),
    (cr_line_ends_in_a_part, "cr-line-ends"),
]


@pytest.mark.parametrize(("build", "code"), MORE, ids=[b.__name__ for b, _c in MORE])
def test_more_readings(build: Callable[[], bytes], code: str) -> None:
    raw = build()
    ex = run(raw)
    assert found_as_a_part(ex), [(a.mime_path, a.data == PHOTO) for a in ex.attachments]
    assert code in codes(ex), ex.ambiguities
    shown, missing = shown_by(raw, PHOTO)
    if not shown and missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    assert shown


def test_an_ordinary_message_is_read_once() -> None:
    raw = (HEAD + b'Content-Type: multipart/mixed; boundary="B"\n'
           + body(b"B", [TEXT_PART, image_part()]))
    ex = run(raw)
    assert ex.ambiguities == ()
    assert [(a.mime_path, a.data == PHOTO) for a in ex.attachments] == [("2", True)]
    assert ex.parts == 3


def test_readings_that_agree_hand_the_photo_on_once() -> None:
    """Two Content-Types that differ only in the subtype: both readings split the same
    parts; the photo is handed on once."""
    raw = (HEAD + b'Content-Type: multipart/mixed; boundary="B"\n'
           + b'Content-Type: multipart/related; boundary="B"\n'
           + body(b"B", [TEXT_PART, image_part()]))
    ex = run(raw)
    assert codes(ex) == {"duplicate-content-type"}
    assert [a.data == PHOTO for a in ex.attachments] == [True]


def test_a_longer_boundary_is_no_junk_after_this_one() -> None:
    """`--B_1` is the delimiter of a nested multipart with boundary B_1, not `--B` with junk:
    no ambiguity."""
    inner = (b'Content-Type: multipart/alternative; boundary="B_1"\n'
             + body(b"B_1", [TEXT_PART, b"Content-Type: text/html\n\n<p>Hello.</p>\n"]))
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="B"\n' + body(b"B", [inner,
                                                                                 image_part()])
    ex = run(raw)
    assert ex.ambiguities == ()
    assert [a.mime_path for a in ex.attachments] == ["2"]


def test_the_readings_are_bounded() -> None:
    """Every part has two transfer encodings: past MAX_READINGS extra readings the message
    is unscannable (max-readings), never walked without end."""
    from mailfilter.extract.mime import MAX_READINGS

    cte = b"Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64\n"
    parts = [image_part(cte)] * (MAX_READINGS + 8)
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="B"\n' + body(b"B", parts)
    ex = run(raw)
    assert any(u.reason == "max-readings" for u in ex.unscannable), ex.unscannable
    assert any(a.data == PHOTO for a in ex.attachments)


def test_a_huge_parameter_list_is_read_in_linear_time() -> None:
    """2 MB of `;` in a Content-Type and the boundary after them: compat32's parameter
    parser, quadratic in them, takes minutes (so does Python's `email` as a reader); ours
    reads them in linear time."""
    import time

    raw = (HEAD + b"Content-Type: multipart/mixed" + b"; x=1" * 400_000 + b'; boundary="B"\n'
           + body(b"B", [TEXT_PART, image_part()]))
    started = time.perf_counter()
    ex = run(raw)
    assert time.perf_counter() - started < 10
    assert any(a.data == PHOTO for a in ex.attachments)


# --- mbox files -----------------------------------------------------------------------------


def mbox_without_blank_lines() -> bytes:
    """Three messages; the photo's is the second, its From_ line right after the first
    message's last line (no empty line before it)."""
    first = HEAD + b"Content-Type: text/plain\n\nHello, no photo here.\n"
    second = (HEAD + b'Content-Type: multipart/mixed; boundary="B"\n'
              + body(b"B", [TEXT_PART, image_part()]))
    third = HEAD + b"Content-Type: text/plain\n\nHello,\nFrom here on, plain text.\n"
    return (b"From alice@example.org Mon Jan  1 00:00:00 2024\n" + first
            + b"From alice@example.org Mon Jan  1 00:01:00 2024\n" + second
            + b"\nFrom alice@example.org Mon, 1 Jan 2024 00:02:00 +0000\n" + third)


@pytest.mark.parametrize("chunk", [7, 100, 1 << 20])
def test_mbox_split_at_from_lines_without_a_blank_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    from mailfilter.cli import mailbox

    path = tmp_path / "box.mbox"
    path.write_bytes(mbox_without_blank_lines())
    monkeypatch.setattr(mailbox, "CHUNK", chunk)
    messages = [raw for _label, raw in mailbox.iter_messages([path])]
    assert len(messages) == 3
    assert mailbox.count_messages([path]) == 3
    assert [a.data == PHOTO for a in run(messages[1]).attachments] == [True]
    assert messages[2].endswith(b"From here on, plain text.\n")  # not a separator


def test_python_mailbox_shows_the_photo_in_such_an_mbox(tmp_path: Path) -> None:
    """The reference: Python's `mailbox.mbox` splits there too."""
    import mailbox as stdlib_mailbox

    path = tmp_path / "box.mbox"
    path.write_bytes(mbox_without_blank_lines())
    box = stdlib_mailbox.mbox(str(path), create=False)
    try:
        leaves = [_python_email(email.policy.default)(bytes(m)) for m in box]
    finally:
        box.close()
    assert any(PHOTO in found for found in leaves)


# --- what the operator sees, and decides -----------------------------------------------------


def test_scan_json_lists_the_ambiguities_and_matches_the_photo(tmp_path: Path) -> None:
    """End to end: `mailfilter scan --json` matches the photo read the other way, and says
    where readers disagree."""
    import json
    import sys

    photo = tmp_path / "known.jpg"
    photo.write_bytes(PHOTO)
    hashed = subprocess.run([sys.executable, "-m", "mailfilter", "hash", "--json", str(photo)],
                            capture_output=True, text=True, timeout=180, check=True)
    hashes = tmp_path / "list.hma"
    hashes.write_text(f"md5 {json.loads(hashed.stdout)['md5']}\n")
    mail = tmp_path / "m.eml"
    mail.write_bytes(duplicate_content_type_last())
    out = subprocess.run([sys.executable, "-m", "mailfilter", "scan", "--json", "--hashes",
                          str(hashes), str(mail)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 1, out.stderr
    record = json.loads(out.stdout)
    assert record["verdict"] == "match"
    assert record["ambiguities"] == ["duplicate-content-type at message"]


@pytest.mark.parametrize(("choice", "kind", "code"), [
    ("scan-all", "relay", None),
    ("tempfail", "tempfail", 451),
    ("reject", "reject", 550),
    ("quarantine", "quarantine", None),
])
def test_on_ambiguous_decides_for_a_clean_ambiguous_message(
    choice: str, kind: str, code: int | None
) -> None:
    from mailfilter.model import ScanResult, Verdict
    from mailfilter.policy import decide
    from mailfilter.settings import PolicySettings

    policy = PolicySettings.model_validate({"on_ambiguous": choice})
    result = ScanResult("m", None, Verdict.CLEAN, ambiguities=("boundary-case at message",))
    action = decide(result, policy)
    assert action.kind.value == kind
    assert (action.reply.code if action.reply else None) == code
    assert action.reason == ("clean" if choice == "scan-all" else "ambiguous")
    # without ambiguities the choice changes nothing
    assert decide(ScanResult("m", None, Verdict.CLEAN), policy).kind.value == "relay"


def test_a_match_is_acted_on_whatever_on_ambiguous_says() -> None:
    from mailfilter.model import ScanResult, Verdict
    from mailfilter.policy import decide
    from mailfilter.settings import PolicySettings

    policy = PolicySettings.model_validate({"on_ambiguous": "tempfail", "on_match": "reject"})
    result = ScanResult("m", None, Verdict.MATCH, ambiguities=("boundary-case at message",))
    assert decide(result, policy).reason == "match"


def test_a_boundary_after_a_megabyte_of_parameters_and_a_decoy() -> None:
    """1 MB of parameters before the boundary (past what the parameter parsers read), and
    delimiter-like decoy lines first in the body (what guessing the boundary would take):
    the lenient reading of `boundary=` still splits the photo out as a part."""
    import time

    decoy = b"\n--X\nContent-Type: text/plain\n\nhi\n--X\nContent-Type: text/plain\n\nho\n"
    raw = (HEAD + b"Content-Type: multipart/mixed" + b"; x=1" * 200_000 + b'; boundary="B"\n'
           + decoy + body(b"B", [TEXT_PART, image_part()]) + b"--X--\n")
    started = time.perf_counter()
    ex = run(raw)
    assert time.perf_counter() - started < 10
    assert found_as_a_part(ex)
