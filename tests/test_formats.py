"""Hash list parsers: every format, bad lines, tombstones, detection, hostile XML.

All hashes here are random or generated; nothing refers to real list content.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from mailfilter.hashing.gridhist import HASH_BYTES as GRIDHIST_BYTES
from mailfilter.matching.formats import (
    ListFormatError,
    ParsedBatch,
    ParseTally,
    detect_format,
    format_added,
    parse_added,
    parse_file,
    parse_stream,
)

RNG = np.random.default_rng(20240501)


def pdq_like(rng: np.random.Generator = RNG) -> str:
    """A random 256-bit value with exactly 128 bits set, as real PDQ hashes have."""
    bits = np.zeros(256, np.uint8)
    bits[rng.permutation(256)[:128]] = 1
    return np.packbits(bits).tobytes().hex()


def random_hex(nbytes: int, rng: np.random.Generator = RNG) -> str:
    return rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes().hex()


def parse(text: str | bytes, fmt: str, **kw: int) -> tuple[list[ParsedBatch], ParseTally]:
    data = text.encode() if isinstance(text, str) else text
    batches = list(parse_stream(io.BytesIO(data), fmt, **kw))
    tally = ParseTally()
    for b in batches:
        tally.add(b)
    return batches, tally


def entries(batches: list[ParsedBatch]) -> list[tuple[str, str, tuple[str, ...], int]]:
    return [e for b in batches for e in b.iter_entries()]


# --- pdq -------------------------------------------------------------------------------------


def test_pdq_lines_prefixes_quality_and_bad_lines() -> None:
    good = [pdq_like() for _ in range(6)]
    text = "\n".join([
        "# a comment",
        good[0],
        f"hash={good[1]}",
        f"{good[2].upper()},100,photo.jpg",
        f"{good[3]},30",  # quality below 50: refused
        f"hash={good[4]},norm=128,delta=0,quality=90,filename=x.jpg",
        "",
        "0" * 64,
        "f" * 64,
        "not-a-hash",
        good[5][:-1],
        f"{good[5]} 77",
    ]) + "\n"
    batches, tally = parse(text, "pdq", pdq_min_quality=50)
    values = [e[1] for e in entries(batches)]
    assert values == [good[0], good[1], good[2], good[4], good[5]]
    assert tally.lines == 12
    assert tally.entries == {"pdq": 5}
    assert tally.degenerate == 3
    assert tally.skipped == {
        "pdq quality below 50": 1,
        "degenerate pdq (all zeros)": 1,
        "degenerate pdq (all ones)": 1,
        "bad pdq value (expected 64 hex digits)": 2,
    }
    assert tally.examples == [
        (5, "pdq quality below 50"),
        (8, "degenerate pdq (all zeros)"),
        (9, "degenerate pdq (all ones)"),
        (10, "bad pdq value (expected 64 hex digits)"),
        (11, "bad pdq value (expected 64 hex digits)"),
    ]


def test_hex_with_inner_blanks_is_not_accepted() -> None:
    value = pdq_like()
    spaced = value[:10] + " " + value[12:] + "00"  # 64 characters, but not all hex digits
    _, tally = parse(spaced + "\n", "pdq")
    assert tally.loaded == 0


def test_batches_are_bounded_and_share_one_label_table() -> None:
    text = "".join(f"{pdq_like()}\n" for _ in range(2500))
    batches, tally = parse(text, "pdq", batch_size=1000)
    assert [b.entry_count for b in batches] == [1000, 1000, 500]
    assert tally.loaded == 2500 and tally.lines == 2500
    assert len({id(b.labels) for b in batches}) == 1


# --- te-csv ----------------------------------------------------------------------------------


def test_threatexchange_csv() -> None:
    pdq1, pdq2, md5 = pdq_like(), pdq_like(), random_hex(16)
    text = (
        "indicator,first_descriptor_id,added_on,labels\n"
        f'{pdq1},1001,2021-03-04T05:06:07+0000,"media_type_photo, sample"\n'
        f'{pdq2},1002,2021-03-05,"alpha beta  alpha"\n'
        f"{md5},1003,not a date,\n"
        "xyz,1004,2021-03-05,\n"
        f"{'0' * 64},1005,2021-03-05,\n"
    )
    batches, tally = parse(text, "te-csv")
    got = entries(batches)
    assert ("pdq", pdq1, ("media_type_photo", "sample"), parse_added("2021-03-04T05:06:07Z")) in got
    assert ("pdq", pdq2, ("alpha", "beta"), parse_added("2021-03-05")) in got
    assert ("md5", md5, (), 0) in got
    assert tally.skipped == {"indicator is not a PDQ, MD5 or SHA-1 hash": 1,
                             "degenerate pdq (all zeros)": 1}
    assert tally.examples == [(5, "indicator is not a PDQ, MD5 or SHA-1 hash"),
                              (6, "degenerate pdq (all zeros)")]
    assert tally.lines == 6


def test_te_csv_without_header_is_refused() -> None:
    with pytest.raises(ListFormatError, match="indicator"):
        parse(f"{pdq_like()},1,2021-01-01,x\n", "te-csv")


# --- md5 / sha1 / sha256 ---------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "nbytes"), [("md5", 16), ("sha1", 20), ("sha256", 32)])
def test_single_hex_formats(fmt: str, nbytes: int) -> None:
    a, b = random_hex(nbytes), random_hex(nbytes)
    text = f"{a}\n{b.upper()}  some/file.jpg\n{random_hex(nbytes + 1)}\nzz\n"
    batches, tally = parse(text, fmt)
    assert [e[1] for e in entries(batches)] == [a, b]
    assert all(e[0] == fmt for e in entries(batches))
    assert tally.skipped == {f"bad {fmt} value (expected {2 * nbytes} hex digits)": 2}


# --- hma -------------------------------------------------------------------------------------


def test_hma_signal_types() -> None:
    """HMA's names map to our signal types (video_md5 and photo_md5 are MD5s of the file:
    exact hashes, matched against every attachment); what we have no signal for is
    skipped by name."""
    p, m, v = pdq_like(), random_hex(16), random_hex(16)
    text = (
        "signal_type,signal\n"
        f"pdq {p}\n"
        f"md5,{m}\n"
        f"video_md5 {v}\n"
        f"url https://example.org/\n"
        "pdq\n"
    )
    batches, tally = parse(text, "hma")
    assert entries(batches) == [("pdq", p, (), 0), ("md5", m, (), 0), ("md5", v, (), 0)]
    assert tally.skipped == {
        "unsupported signal type url": 1,
        "expected SIGNAL_TYPE VALUE": 1,
    }


# --- ncmec-xml -------------------------------------------------------------------------------


def ncmec_doc(images: Sequence[str], deleted: Sequence[str] = (), ns: bool = True) -> str:
    xmlns = ' xmlns="https://hashsharing.example/v2"' if ns else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<queryResult{xmlns}>\n'
        '<images count="1" maxTimestamp="2024-01-01T00:00:00Z">\n'
        + "".join(images) + "".join(deleted)
        + "</images>\n<paging><next>/v2/entries?from=x&amp;start=2</next></paging>\n"
        "</queryResult>\n"
    )


def ncmec_image(ident: int, fingerprints: dict[str, str], classification: str = "",
                tag: str = "image") -> str:
    fps = "".join(f"<{k}>{v}</{k}>" for k, v in fingerprints.items())
    cls = f"<classification>{classification}</classification>" if classification else ""
    return (f'<{tag}><id>{ident}</id><member id="7">Example ESP</member>{cls}'
            f"<fingerprints>{fps}</fingerprints></{tag}>\n")


def test_ncmec_xml_images_tombstones_and_unsupported() -> None:
    md5, sha1, pdq = random_hex(16), random_hex(20), pdq_like()
    gone_md5, video_md5 = random_hex(16), random_hex(16)
    doc = ncmec_doc(
        [
            ncmec_image(1, {"md5": md5, "sha1": sha1, "pdq": pdq, "pdna": "1,2,3"}, "A1"),
            ncmec_image(2, {"md5": "nothex"}),
            ncmec_image(3, {}),
            ncmec_image(4, {"MD5": video_md5}, tag="video"),
        ],
        [ncmec_image(5, {"md5": gone_md5, "pdna": "4,5"}, tag="deletedImage"),
         ncmec_image(6, {}, tag="deletedImage")],
    )
    batches, tally = parse(doc, "ncmec-xml")
    assert sorted(entries(batches)) == sorted([
        ("md5", md5, ("A1",), 0), ("sha1", sha1, ("A1",), 0), ("pdq", pdq, ("A1",), 0),
        ("md5", video_md5, (), 0),  # a video's MD5: an exact hash like any other
    ])
    assert [t for b in batches for t in b.tombstones] == [("md5", bytes.fromhex(gone_md5))]
    assert tally.skipped == {
        "unsupported algorithm pdna": 2,
        "bad md5 value (expected 32 hex digits)": 1,
        "entry without fingerprints": 1,
        "deleted entry without fingerprints": 1,
    }
    # line numbers point at the record
    assert tally.examples[0] == (4, "unsupported algorithm pdna")


def test_ncmec_xml_streams_in_batches() -> None:
    images = [ncmec_image(i, {"md5": random_hex(16)}) for i in range(3000)]
    batches, tally = parse(ncmec_doc(images, ns=False), "ncmec-xml", batch_size=500)
    assert tally.loaded == 3000
    assert len(batches) >= 2  # XML is read in chunks; batches are cut at chunk ends


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<queryResult><images><image><id>&lol3;</id></image></images></queryResult>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE q [ <!ENTITY ext SYSTEM "file:///etc/passwd"> ]>
<queryResult><images><image><id>&ext;</id></image></images></queryResult>
"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL_ENTITY])
def test_ncmec_xml_refuses_dtds_and_entities(doc: str) -> None:
    with pytest.raises(ListFormatError, match="DOCTYPE"):
        parse(doc, "ncmec-xml")


def test_ncmec_xml_not_well_formed_fails_the_whole_parse() -> None:
    doc = ncmec_doc([ncmec_image(1, {"md5": random_hex(16)})])[:-30]  # truncated download
    with pytest.raises(ListFormatError, match="not well-formed"):
        parse(doc, "ncmec-xml")


def test_ncmec_xml_undefined_entity_is_an_error() -> None:
    with pytest.raises(ListFormatError):
        parse("<queryResult><images><image><id>&nope;</id></image></images></queryResult>",
              "ncmec-xml")


# --- jsonl -----------------------------------------------------------------------------------


def test_jsonl_round_trip_fields_and_bad_lines() -> None:
    p = pdq_like()
    lines = [
        json.dumps({"list": "x", "algorithm": "pdq", "value": p, "labels": ["b", "a"],
                    "added": "2023-02-03T04:05:06Z"}),
        json.dumps({"list": "x", "algorithm": "gridhist", "value": random_hex(GRIDHIST_BYTES)}),
        json.dumps({"algorithm": "photodna", "value": "00"}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"algorithm": "md5", "value": random_hex(16), "labels": [1]}),
    ]
    batches, tally = parse("\n".join(lines) + "\n", "jsonl")
    got = entries(batches)
    assert got[0] == ("pdq", p, ("a", "b"), parse_added("2023-02-03T04:05:06Z"))
    assert got[1][0] == "gridhist"
    assert tally.skipped == {"unknown algorithm": 1, "not valid JSON": 1,
                             "not a JSON object": 1, "labels must be a list of strings": 1}


def test_added_times() -> None:
    assert parse_added("2020-07-31T18:47:45+0000") == 1596221265
    assert parse_added(1596221265) == 1596221265
    assert parse_added("garbage") == 0 and parse_added(None) == 0 and parse_added(-5) == 0
    assert format_added(1596221265) == "2020-07-31T18:47:45Z"
    assert format_added(0) is None


# --- detection -------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_detect_format(tmp_path: Path) -> None:
    pdqs = [pdq_like() for _ in range(8)]
    cases = {
        "pdq": "\n".join(pdqs) + "\n",
        "pdq-quality": "\n".join(f"{p},100" for p in pdqs[:2]) + "\n",
        "pdq-prefix": f"hash={pdqs[0]}\n",
        "sha256": "\n".join(random_hex(32) for _ in range(30)) + "\n",
        "md5": f"# md5 list\n\n{random_hex(16)}\n{random_hex(16)}  a.jpg\n",
        "sha1": f"{random_hex(20)}\n",
        "te-csv": f"indicator,first_descriptor_id,added_on,labels\n{pdqs[0]},1,,\n",
        "hma": f"pdq {pdqs[0]}\nvideo_md5 {random_hex(16)}\n",
        "jsonl": json.dumps({"algorithm": "md5", "value": random_hex(16)}) + "\n",
        "ncmec-xml": ncmec_doc([]),
    }
    expected = {"pdq-quality": "pdq", "pdq-prefix": "pdq"}
    for name, text in cases.items():
        assert detect_format(write(tmp_path, name, text)) == expected.get(name, name), name


def test_detect_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ListFormatError, match="empty"):
        detect_format(write(tmp_path, "empty", "\n\n"))
    with pytest.raises(ListFormatError, match="unknown list format"):
        detect_format(write(tmp_path, "junk", "hello world\n"))
    with pytest.raises(ListFormatError, match="--format pdq or --format sha256"):
        detect_format(write(tmp_path, "short", f"{pdq_like()}\n"))


def test_gzip_files_are_read_transparently(tmp_path: Path) -> None:
    values = [random_hex(16) for _ in range(100)]
    path = tmp_path / "list.md5.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(values) + "\n")
    assert detect_format(path) == "md5"
    got = [e[1] for b in parse_file(path) for e in b.iter_entries()]
    assert got == values


def test_unknown_format_name() -> None:
    with pytest.raises(ListFormatError, match="unknown list format"):
        list(parse_stream(io.BytesIO(b""), "csv"))
