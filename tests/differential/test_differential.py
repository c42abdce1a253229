"""Issue 15, item 8: no construction that a reference program shows may be called anything
but `match` by mailfilter (`unscannable` where a documented limit, such as a password, is the
construction's point).

A construction no reference shows is skipped and listed as "not shown by any reference" in
the run's summary: the suite claims only what other software demonstrably displays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import constructions
import pytest
from differential_run import RUNS, Run, differential_run, expected


# The fixture lives here, not in a conftest.py of this folder: tests/ is no package, so a
# second conftest module would shadow tests/conftest.py for every module importing from it.
@pytest.fixture(scope="session")
def differential(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    run = differential_run()
    path = tmp_path_factory.mktemp("differential") / "summary.json"
    path.write_text(json.dumps({"seconds": run.seconds,
                                "constructions": [o.as_json() for o in run.outcomes.values()]},
                               indent=1))
    run.summary_path = path
    RUNS.append(run)
    yield run

# Constructions that references show and mailfilter does not match yet: each is an open gap,
# to be removed from this list as the fix lands (strict: a fixed gap fails until removed).
KNOWN_GAPS: list[tuple[str, str]] = [
    ("pdf-vector-pixels[64x48]", "clean: a page that draws the photo as filled rectangles "
     "(no image object at all): only rendering the whole page sees it"),
    ("pdf-vector-pixels[128x96]", "clean: as pdf-vector-pixels[64x48], finer"),
    ("windows-metafile[rtf-wmetafile]", "clean: an RTF picture that is a Windows metafile "
     "drawing the photo with META_STRETCHDIB (Word draws it) is not decoded"),
    ("windows-metafile[wmf-attachment]", "clean: a .wmf attachment drawing the photo with "
     "META_STRETCHDIB (Windows shows it) is not decoded"),
    ("enhanced-metafile[emf-attachment]", "clean: an .emf attachment drawing the photo with "
     "EMR_STRETCHDIBITS (Windows shows it) is not decoded"),
    ("enhanced-metafile[emf-in-docx]", "clean: the same EMF as a picture of a .docx (Word "
     "draws it) is not decoded"),
    ("windows-metafile[wmf-dibstretchblt]", "clean: a .wmf drawing the photo with "
     "META_DIBSTRETCHBLT is not decoded"),
    ("enhanced-metafile[emf-stretchblt]", "clean: an .emf drawing the photo with "
     "EMR_STRETCHBLT is not decoded"),
    ("audio-cover-art[mp3-id3-unsynchronised]", "clean: the cover picture of an MP3 whose "
     "ID3v2.3 tag is unsynchronised (FF 00 for every FF before E0-FF or 00; players undo it) "
     "is not decoded"),
    ("audio-cover-art[mp3-id3-compressed-frame]", "clean: an MP3 cover picture in a "
     "zlib-compressed ID3v2.3 frame is not decoded"),
    ("ogg-opus-cover-art", "unscannable (truncated): an Opus file's cover picture "
     "(METADATA_BLOCK_PICTURE, base64 split over Ogg pages; players join the pages) is not "
     "read whole"),
    ("archive-variants[7z-arm64]", "unscannable (unsupported-archive): a 7z archive with "
     "the ARM64 branch filter, which 7-Zip reads"),
    ("archive-methods[zip-ppmd]", "unscannable (unsupported-archive): zip entries "
     "compressed with PPMd (method 98), which 7-Zip and bsdtar read"),
]


def _params() -> list[object]:
    gaps = dict(KNOWN_GAPS)
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=gaps[name]))
            if name in gaps else name for name in constructions.REGISTRY]


def test_registry_is_large_enough() -> None:
    assert len(constructions.REGISTRY) >= 100


def test_known_gaps_name_constructions() -> None:
    unknown = [name for name, _ in KNOWN_GAPS if name not in constructions.REGISTRY]
    assert not unknown


@pytest.mark.slow  # the whole run: 70-130 s on two cores shared with other work
@pytest.mark.parametrize("name", _params())
def test_shown_photo_is_matched(differential: Run, name: str) -> None:
    o = differential.outcomes[name]
    assert o.error is None, f"building {name} failed: {o.error}"
    if o.unavailable:
        pytest.skip(o.unavailable)
    if not o.shown:
        pytest.skip("not shown by any reference")
    chains = sorted({c for cs in o.shown_by.values() for c in cs})
    assert o.verdict in expected(o), (
        f"{name}: shown by {chains}, mailfilter says {o.verdict} "
        f"(reasons {o.reasons}, defects {o.defects})")
