"""What a PDF viewer shows where images are drawn: pages rendered with PDFium, cropped to
the regions that images cover, each passed on as a (grey) PNG for the decode stage.

The image objects of a file (pdf.py) are what it stores; a viewer can show something else:
an inline image in a content stream (no object of its own), samples that a `/Decode` array
inverts back, an image clipped to the part that matters, a plain image that a soft mask
turns into a picture, a photo cut into tiles drawn edge to edge. So every page that draws
images is rendered where they are drawn: each group of placements that touch or overlap
(a tiled photo is one group) as the union of their visible boxes, and, in a group of
several, each placement on its own (a photo laid over a background). A visible box is the
image's box on the page, cut to its clip paths (their bounding boxes: text clips are not
seen) and to the page's visible area. Annotations are flattened into the page first, so
the images their appearances draw (stamps, form fields) are found the same way.

A picture can also be drawn with no image at all: thousands of small filled paths, one per
pixel of a mosaic, or a few large paths of many segments, one per colour of a posterised
copy. Pages are walked for these too (forms followed): every visible path is counted into a
coarse grid over the page, and each connected patch of cells that holds enough drawn detail
(`_MIN_PATCHES` small paths, a large path counting by its segments) in enough colours
(`_MIN_COLOURS`) is rendered like an image region. Measured on a 640 x 480 photo: a mosaic of
24 x 18 cells or a posterisation to 8 grey levels still matches, 16 x 12 cells or 4 levels
do not; text, drawn in one or two colours (outlined text included), and large simple
paths (backgrounds, frames, rules) make no region. Shadings are not counted here (a lone
gradient shows no picture, and PDFium does not tell a mesh shading from a gradient): pages
whose resources hold a mesh shading (pdf.py finds them) are rendered where shadings and
large filled paths are drawn, as pages whose tiling patterns paint images are.

Bounds, per document: `pdf_render_max_pages` pages that draw images (or pictures with
paths), regions of at most `pdf_render_max_side` pixels on the long side (never finer than
the images' own pixels), `pdf_render_max_pixels` rendered pixels in all,
`pdf_render_deadline` seconds. Pages the limits leave out are reported as
`pages-past-limit`, never dropped silently. Groups made only of bilevel images (scanned
pages, stencils) are left out, as pdf.py leaves out bilevel image objects.

PDFium is C code reading hostile input. It runs inside the worker process (workers.py), so
a crash ends only that worker and the scan reports it (`worker-crashed`); a single render
call cannot be interrupted, the worker's task deadline is the backstop. Its Python-level
errors are caught here.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mailfilter.extract import core, sniff
from mailfilter.extract.core import Context, PayloadNode, member_path

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in page space (points)
Matrix = tuple[float, float, float, float, float, float]  # a b c d e f, as in PDF

_IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
# Form XObjects nest at most this deep for us (PDFium's own default is 15).
_MAX_FORM_DEPTH = 12
# Page objects looked at per document (a few microseconds each): a page of millions of
# paths is not walked to the end.
_MAX_OBJECTS = 2_000_000
# Image placements considered per page; grouping them is quadratic.
_MAX_PLACEMENTS = 2_000
# Other page objects remembered per page (to see what is painted over an image); past
# this, every image on the page is rendered.
_MAX_OTHERS = 5_000
# Text render modes that paint nothing (invisible, clip only).
_UNPAINTED_TEXT = (3, 7)
# Pages drawing an image larger than this (its own pixels) are not rendered there: the
# decode stage's own default limit (images.max_pixels).
_MAX_IMAGE_PIXELS = 100_000_000
# Filled paths on pages whose patterns paint images: at least this big (points) to count,
# and rendered at this many pixels per point (144 dpi; the pattern's image is not measured).
_MIN_PATTERN_SIDE = 32.0
_PATTERN_DENSITY = 2.0
# A region smaller than this (pixels, short side) carries too little to fingerprint.
_MIN_REGION_SIDE = 32
# In a group of several placements, at most this many (the largest) are also rendered alone.
_MAX_MEMBERS_ALONE = 8
# Placements this close (points) count as touching: tiles are rarely placed exactly.
_TOUCH = 1.0
# Vector pictures (see the module docstring). The page is divided into this many cells a
# side; a path at most _SMALL_CELLS cells wide and high is one patch of a picture; a larger
# one counts only with at least _COMPLEX_SEGMENTS segments, as one patch per
# _SEGMENTS_PER_PATCH (a rectangle has 5), and marks every cell its box spans.
_GRID = 64
_SMALL_CELLS = 4
_COMPLEX_SEGMENTS = 64
_SEGMENTS_PER_PATCH = 5
# A region needs this many patches (a 24 x 18 mosaic has 432 and matches; 16 x 12 does not)
_MIN_PATCHES = 128
# ...in at least this many colours (fill or stroke, alpha included): text is drawn in one or
# two, a photo posterised to 8 grey levels still matches, to 4 it does not.
_MIN_COLOURS = 3
# Colours remembered per cell (only whether a region reaches _MIN_COLOURS matters).
_COLOURS_KEPT = 8
# Vector regions are rendered at this many pixels per point (144 dpi), within max_side.
_VECTOR_DENSITY = 2.0
# Vector regions per page rendered (the largest); the rest are reported.
_MAX_VECTOR_REGIONS = 16


class CannotOpen(Exception):
    """PDFium cannot open the document (the detail says why)."""


@dataclass(slots=True)
class _Placement:
    box: Box  # visible part on the page
    density: float  # the image's own pixels per point, the finer direction
    bilevel: bool
    seq: int  # painting order on the page
    obj: Any  # the PDFium image object
    whole: bool  # drawn whole: no clip or page edge cuts it, no transparency of its own
    pixels: int  # the image's own size (width x height)
    redundant: bool = False  # shown exactly as a stored image already passed on


class _VectorGrid:
    """Where the page draws detail with paths: a coarse grid of cells over the page box.
    Every cell a counted path's box spans is marked; the cell of its centre keeps its
    patches, the union of the boxes and (a few of) the colours. Memory is bounded by the
    grid, and the work per path does not depend on its size: a few PDFium calls (pages of
    tables and charts have tens of thousands of paths, so the ctypes buffers are made
    once) and one numpy assignment."""

    def __init__(self, page_box: Box, pdfium_c: Any) -> None:
        self.left, self.bottom = page_box[0], page_box[1]
        self.per_x = _GRID / max(page_box[2] - page_box[0], 1.0)  # cells per point
        self.per_y = _GRID / max(page_box[3] - page_box[1], 1.0)
        # Cells marked by the box of a path: small ones (ix * _GRID + iy), large ones
        # ([ix, iy]: a page-wide path marks 4096 cells in one numpy step).
        self.small_marked: set[int] = set()
        self.marked = np.zeros((_GRID, _GRID), dtype=bool)
        # centre cell -> [patches, x0, y0, x1, y1, colours]
        self.centres: dict[int, list[Any]] = {}
        # On the whole page: when these fall short, no group of cells can be a picture.
        self.patches = 0
        self.colours: set[int] = set()
        self.c = pdfium_c
        self.fill_mode, self.stroke = ctypes.c_int(), ctypes.c_int()
        self.rgba = tuple(ctypes.c_uint() for _ in range(4))
        self.ltrb = tuple(ctypes.c_float() for _ in range(4))

    def count(self, raw: Any, to_page: Matrix, clip: Box | None) -> None:
        """Count one path object. Written out flat: it runs for every path of every page
        (about 5 us; the helpers _intersect and _finite and a numpy slice for every path
        tripled that)."""
        c = self.c
        if not c.FPDFPath_GetDrawMode(raw, self.fill_mode, self.stroke):
            return
        filled = self.fill_mode.value != 0
        if not filled and not self.stroke.value:
            return  # a clipping path: paints nothing
        left, bottom, right, top = self.ltrb
        if not c.FPDFPageObj_GetBounds(raw, left, bottom, right, top):
            return
        box: Box = (left.value, bottom.value, right.value, top.value)
        if to_page != _IDENTITY:
            box = _transform(to_page, box)
        if clip is not None:
            box = (max(box[0], clip[0]), max(box[1], clip[1]), min(box[2], clip[2]),
                   min(box[3], clip[3]))
        # One test for all four (a sum of finite floats that overflows is refused too).
        if not (box[2] >= box[0] and box[3] >= box[1]
                and math.isfinite(box[0] + box[1] + box[2] + box[3])):
            return
        last = _GRID - 1
        x0 = min(max(int((box[0] - self.left) * self.per_x), 0), last)
        x1 = min(max(int((box[2] - self.left) * self.per_x), 0), last)
        y0 = min(max(int((box[1] - self.bottom) * self.per_y), 0), last)
        y1 = min(max(int((box[3] - self.bottom) * self.per_y), 0), last)
        small = x1 - x0 < _SMALL_CELLS and y1 - y0 < _SMALL_CELLS
        if small:
            patches = 1
        else:
            segments = c.FPDFPath_CountSegments(raw)
            if segments < _COMPLEX_SEGMENTS:
                return  # a background, a frame, a rule: no detail of a picture
            patches = segments // _SEGMENTS_PER_PATCH
        centre = (x0 + x1) // 2 * _GRID + (y0 + y1) // 2
        kept = self.centres.get(centre)
        colour = None
        # A cell with enough colours already makes its group colourful enough: the colour
        # of one more path there changes nothing (in a picture, most cells soon have).
        if kept is None or len(kept[5]) < _MIN_COLOURS:
            r, g, b, a = self.rgba
            get_colour = (c.FPDFPageObj_GetFillColor if filled
                          else c.FPDFPageObj_GetStrokeColor)
            if not get_colour(raw, r, g, b, a) or a.value == 0:
                return  # fully transparent: paints nothing
            colour = (r.value & 255) << 24 | (g.value & 255) << 16 | (b.value & 255) << 8 | (
                a.value & 255)
            if len(self.colours) < _MIN_COLOURS:
                self.colours.add(colour)
        self.patches += patches
        if small:
            for ix in range(x0 * _GRID, x1 * _GRID + 1, _GRID):
                for cell in range(ix + y0, ix + y1 + 1):
                    self.small_marked.add(cell)
        else:
            self.marked[x0:x1 + 1, y0:y1 + 1] = True
        if kept is None:
            self.centres[centre] = [patches, *box, {colour}]
        else:
            kept[0] += patches
            kept[1], kept[2] = min(kept[1], box[0]), min(kept[2], box[1])
            kept[3], kept[4] = max(kept[3], box[2]), max(kept[4], box[3])
            if colour is not None and len(kept[5]) < _COLOURS_KEPT:
                kept[5].add(colour)

    def regions(self) -> list[Box]:
        """Boxes of the groups of neighbouring marked cells that look like a picture, the
        largest first."""
        found: list[tuple[float, Box]] = []
        if self.patches < _MIN_PATCHES or len(self.colours) < _MIN_COLOURS:
            return []
        marked = self.small_marked | set(np.flatnonzero(self.marked).tolist())
        seen: set[int] = set()
        for start in self.centres:
            if start in seen:
                continue
            seen.add(start)
            todo = [start]
            patches = 0
            box: Box | None = None
            colours: set[int] = set()
            while todo:
                cell = todo.pop()
                kept = self.centres.get(cell)
                if kept is not None:
                    patches += kept[0]
                    here: Box = (kept[1], kept[2], kept[3], kept[4])
                    box = here if box is None else _union(box, here)
                    if len(colours) < _MIN_COLOURS:
                        colours |= kept[5]
                ix, iy = divmod(cell, _GRID)
                for near, inside in ((cell + _GRID, ix + 1 < _GRID), (cell - _GRID, ix > 0),
                                     (cell + 1, iy + 1 < _GRID), (cell - 1, iy > 0)):
                    if inside and near in marked and near not in seen:
                        seen.add(near)
                        todo.append(near)
            if box is None or patches < _MIN_PATCHES or len(colours) < _MIN_COLOURS:
                continue
            found.append(((box[2] - box[0]) * (box[3] - box[1]), box))
        found.sort(key=lambda f: -f[0])
        return [box for _, box in found]


@dataclass(slots=True)
class _PageObjects:
    images: list[_Placement]
    others: list[tuple[int, Box]]  # (painting order, box) of text, paths and shadings
    vectors: _VectorGrid | None = None  # where paths draw detail (None: no path drawn)


def _concat(first: Matrix, then: Matrix) -> Matrix:
    """The matrix applying `first`, then `then` (PDF's row-vector convention)."""
    a, b, c, d, e, f = first
    a2, b2, c2, d2, e2, f2 = then
    return (a * a2 + b * c2, a * b2 + b * d2, c * a2 + d * c2, c * b2 + d * d2,
            e * a2 + f * c2 + e2, e * b2 + f * d2 + f2)


def _transform(m: Matrix, box: Box) -> Box:
    a, b, c, d, e, f = m
    x0, y0, x1, y1 = box
    xs, ys = [], []
    for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        xs.append(a * x + c * y + e)
        ys.append(b * x + d * y + f)
    return min(xs), min(ys), max(xs), max(ys)


def _intersect(a: Box | None, b: Box | None) -> Box | None:
    if a is None:
        return b
    if b is None:
        return a
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _touch(a: Box, b: Box) -> bool:
    """Whether two boxes overlap or share (nearly) an edge; meeting at a corner is not
    enough (the union of two pictures meeting at a corner is mostly neither)."""
    near = (a[0] - _TOUCH <= b[2] and b[0] - _TOUCH <= a[2]
            and a[1] - _TOUCH <= b[3] and b[1] - _TOUCH <= a[3])
    across = min(a[2], b[2]) - max(a[0], b[0])
    down = min(a[3], b[3]) - max(a[1], b[1])
    return near and (across > _TOUCH or down > _TOUCH)


def _finite(box: Box) -> bool:
    return all(math.isfinite(v) for v in box)


def _clip_box(raw: Any, pdfium_c: Any, budget: list[int]) -> Box | None:
    """The bounding box of an object's clip paths (in its container's space), or None when
    it has none. Each path segment read is taken from `budget` (the document's allowance
    of page objects)."""
    clip = pdfium_c.FPDFPageObj_GetClipPath(raw)
    if not clip:
        return None
    box: Box | None = None
    x, y = ctypes.c_float(), ctypes.c_float()
    for i in range(max(0, min(pdfium_c.FPDFClipPath_CountPaths(clip), 64))):
        xs: list[float] = []
        ys: list[float] = []
        segments = max(0, min(pdfium_c.FPDFClipPath_CountPathSegments(clip, i), 4096))
        budget[0] -= segments
        if budget[0] < 0:
            raise _OutOfTime("clip paths past the limit")
        for j in range(segments):
            seg = pdfium_c.FPDFClipPath_GetPathSegment(clip, i, j)
            if seg and pdfium_c.FPDFPathSegment_GetPoint(seg, x, y):
                xs.append(x.value)
                ys.append(y.value)
        if xs:
            path_box = (min(xs), min(ys), max(xs), max(ys))
            box = _intersect(box, path_box) if box is not None else path_box
            if box is None:
                return (0.0, 0.0, 0.0, 0.0)  # clipped away entirely
    return box


def _children(page: Any, form: Any, pdfium_c: Any) -> Iterator[Any]:
    """Raw handles of the objects of a page (form None) or of a form object, in painting
    order; cheap, unlike wrapping each one (a page of text has thousands)."""
    if form is None:
        count = pdfium_c.FPDFPage_CountObjects(page.raw)
        for i in range(max(0, count)):
            yield pdfium_c.FPDFPage_GetObject(page.raw, i)
    else:
        count = pdfium_c.FPDFFormObj_CountObjects(form)
        for i in range(max(0, count)):
            yield pdfium_c.FPDFFormObj_GetObject(form, i)


def _bounds(raw: Any, pdfium_c: Any) -> Box | None:
    left, bottom, right, top = (ctypes.c_float() for _ in range(4))
    if not pdfium_c.FPDFPageObj_GetBounds(raw, left, bottom, right, top):
        return None
    return left.value, bottom.value, right.value, top.value


def _matrix(raw: Any, pdfium_c: Any) -> Matrix | None:
    m = pdfium_c.FS_MATRIX()
    if not pdfium_c.FPDFPageObj_GetMatrix(raw, m):
        return None
    return m.a, m.b, m.c, m.d, m.e, m.f


def _page_objects(page: Any, page_box: Box, budget: list[int], deadline: float,
                  patterns: bool = False) -> _PageObjects:
    """Where the page draws images (visible boxes in page space, forms followed) and what
    else it paints after the first image, in painting order. `patterns`: the page's
    patterns paint images, so large filled paths count as image placements too."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    image_kind, form_kind = pdfium_c.FPDF_PAGEOBJ_IMAGE, pdfium_c.FPDF_PAGEOBJ_FORM
    result = _PageObjects([], [])
    # (objects, their space to the page's, clip so far, depth, a form above them has a
    # blend mode, soft mask or transparency of its own)
    stack: list[tuple[Iterator[Any], Matrix, Box | None, int, bool]] = [
        (_children(page, None, pdfium_c), _IDENTITY, page_box, 0, False)]
    seq = 0
    while stack:
        objects, to_page, clip, depth, blended = stack[-1]
        raw = next(objects, None)
        if raw is None:
            stack.pop()
            continue
        if not raw:
            continue
        seq += 1
        budget[0] -= 1
        # The clock is read every 1024 objects (seq: the budget falls by more than one at a
        # time, by path cells and clip segments, and could step over every multiple).
        if budget[0] < 0 or (seq & 1023 == 0 and time.monotonic() > deadline):
            raise _OutOfTime("page objects past the limit or the deadline")
        kind = pdfium_c.FPDFPageObj_GetType(raw)
        if kind == pdfium_c.FPDF_PAGEOBJ_PATH:
            if result.vectors is None:
                result.vectors = _VectorGrid(page_box, pdfium_c)
            result.vectors.count(raw, to_page, clip)
        if patterns and kind == pdfium_c.FPDF_PAGEOBJ_SHADING:
            shaded = _visible_box(raw, to_page, clip, pdfium_c)
            if shaded is not None:
                result.images.append(_Placement(shaded, _PATTERN_DENSITY, False, seq, None,
                                                False, 0))
                continue
        if patterns and kind == pdfium_c.FPDF_PAGEOBJ_PATH:
            filled = _filled_box(raw, to_page, clip, pdfium_c)
            if filled is not None:
                result.images.append(_Placement(filled, _PATTERN_DENSITY, False, seq, None,
                                                False, 0))
                continue
        if kind not in (image_kind, form_kind):
            # Only what is painted after an image can change how it shows; invisible text
            # (the OCR layer of a scanned page) and clipping-only text paint nothing.
            if (result.images and len(result.others) < _MAX_OTHERS
                    and not (kind == pdfium_c.FPDF_PAGEOBJ_TEXT and
                             pdfium_c.FPDFTextObj_GetTextRenderMode(raw) in _UNPAINTED_TEXT)):
                bounds = _bounds(raw, pdfium_c)
                other = _intersect(clip, _transform(to_page, bounds)) if bounds else None
                if other is not None:
                    result.others.append((seq, other))
            continue
        own_clip = _clip_box(raw, pdfium_c, budget)
        visible = _intersect(clip, _transform(to_page, own_clip) if own_clip else None)
        matrix = _matrix(raw, pdfium_c)
        if visible is None or matrix is None:
            continue
        if kind == form_kind:
            if depth < _MAX_FORM_DEPTH:
                stack.append((_children(page, raw, pdfium_c), _concat(matrix, to_page), visible,
                              depth + 1,
                              blended or bool(pdfium_c.FPDFPageObj_HasTransparency(raw))))
            continue
        bounds = _bounds(raw, pdfium_c)
        if bounds is None:
            continue
        drawn = _transform(to_page, bounds)
        box = _intersect(visible, drawn)
        if box is None or not _finite(box) or box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        whole = (all(abs(u - v) < 0.5 for u, v in zip(box, drawn, strict=True))
                 and not blended and not pdfium_c.FPDFPageObj_HasTransparency(raw))
        image = pdfium.PdfObject(raw, page=page, pdf=page.pdf, level=depth)
        width, height = _px_size(image)
        result.images.append(_Placement(box, _density(width, height, _concat(matrix, to_page)),
                                        _bilevel(image), seq, image, whole, width * height))
        if len(result.images) >= _MAX_PLACEMENTS:
            raise _OutOfTime(f"more than {_MAX_PLACEMENTS} images drawn on a page")
    return result


def _visible_box(raw: Any, to_page: Matrix, clip: Box | None, pdfium_c: Any) -> Box | None:
    """The visible box of a drawn object (a shading, a filled path) large enough to show
    a picture, else None."""
    bounds = _bounds(raw, pdfium_c)
    box = _intersect(clip, _transform(to_page, bounds)) if bounds else None
    if box is None or not _finite(box):
        return None
    if min(box[2] - box[0], box[3] - box[1]) < _MIN_PATTERN_SIDE:
        return None
    return box


def _filled_box(raw: Any, to_page: Matrix, clip: Box | None, pdfium_c: Any) -> Box | None:
    """The visible box of a filled path large enough to show a picture, else None."""
    fill_mode, stroke = ctypes.c_int(), ctypes.c_int()
    if not pdfium_c.FPDFPath_GetDrawMode(raw, fill_mode, stroke) or fill_mode.value == 0:
        return None
    return _visible_box(raw, to_page, clip, pdfium_c)


def _mark_redundant(found: _PageObjects, plain: frozenset[bytes], annotated: bool) -> None:
    """Mark the placements whose rendering would only repeat a stored image already passed
    on: drawn whole, nothing painted over them later (no text, path, shading or other
    image: a blend mode could change what shows), no annotations on the page, and raw data
    that is a plain stored image (pdf.py: no /Decode, mask or palette)."""
    if not plain or annotated or len(found.others) >= _MAX_OTHERS:
        return
    for p in found.images:
        if not p.whole:
            continue
        if any(seq > p.seq and _overlap(box, p.box) for seq, box in found.others):
            continue
        if any(q is not p and q.seq > p.seq and _overlap(q.box, p.box) for q in found.images):
            continue
        try:
            raw = bytes(p.obj.get_data(decode_simple=False))
        except Exception:
            continue
        p.redundant = hashlib.sha256(raw).digest() in plain


def _mask_density(found: _PageObjects, masks: Mapping[bytes, tuple[int, int]]) -> None:
    """Raise the density of placements whose image has a finer mask than itself to the
    mask's: PDFium draws the masked image at the mask's resolution."""
    for p in found.images:
        if p.obj is None or p.redundant:
            continue
        try:
            raw = bytes(p.obj.get_data(decode_simple=False))
        except Exception:
            continue
        size = masks.get(hashlib.sha256(raw).digest())
        width, height = _px_size(p.obj)
        if size is None or width <= 0 or height <= 0:
            continue
        p.density *= max(1.0, size[0] / width, size[1] / height)


def _overlap(a: Box, b: Box) -> bool:
    """Whether two boxes share more than a sliver (edges that merely touch do not count)."""
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5


def _px_size(obj: Any) -> tuple[int, int]:
    try:
        width, height = obj.get_px_size()
        return max(0, int(width)), max(0, int(height))
    except Exception:
        return 0, 0


def _density(width: int, height: int, image_to_page: Matrix) -> float:
    """Image pixels per point on the page, along the finer of the image's two axes."""
    if width <= 0 or height <= 0:
        return 1.0
    a, b, c, d, _, _ = image_to_page
    across, down = math.hypot(a, b), math.hypot(c, d)
    dens = max(width / across if across > 0 else 0.0, height / down if down > 0 else 0.0)
    return dens if math.isfinite(dens) and dens > 0 else 1.0


def _load_flattened(doc: Any, index: int) -> Any:
    """Page `index`, with its annotations' appearances (stamps, form fields, any kind that a
    viewer draws, an image among them) merged into its content, so that the images they
    draw are found and measured like the page's own."""
    import pypdfium2.raw as pdfium_c

    page = doc[index]
    if pdfium_c.FPDFPage_GetAnnotCount(page.raw) <= 0:
        return page
    flattened = pdfium_c.FPDFPage_Flatten(page.raw, pdfium_c.FLAT_NORMALDISPLAY)
    if flattened != pdfium_c.FLATTEN_SUCCESS:
        return page  # nothing to flatten, or it failed: annotations are still drawn
    page.close()  # PDFium's handles to the page are stale after flattening
    return doc[index]


def _annotated(page: Any) -> bool:
    import pypdfium2.raw as pdfium_c

    return bool(pdfium_c.FPDFPage_GetAnnotCount(page.raw) != 0)


def _bilevel(obj: Any) -> bool:
    try:
        return int(obj.get_metadata().bits_per_pixel) == 1
    except Exception:
        return False


class _OutOfTime(Exception):
    pass


def _regions(placements: list[_Placement]) -> list[tuple[Box, float]]:
    """Boxes to render with their pixel density: each group of touching placements as one
    union, and in a group of several its largest members alone too."""
    parent = list(range(len(placements)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, p in enumerate(placements):
        for j in range(i):
            if _touch(p.box, placements[j].box):
                parent[root(i)] = root(j)
    groups: dict[int, list[_Placement]] = {}
    for i, p in enumerate(placements):
        groups.setdefault(root(i), []).append(p)
    out: list[tuple[Box, float]] = []
    seen: set[tuple[int, int, int, int]] = set()

    def add(box: Box, density: float) -> None:
        key = (round(box[0]), round(box[1]), round(box[2]), round(box[3]))
        if key not in seen:
            seen.add(key)
            out.append((box, density))

    for members in groups.values():
        if all(m.bilevel for m in members):
            continue
        if len(members) == 1 and members[0].redundant:
            continue
        union = members[0].box
        for m in members[1:]:
            union = _union(union, m.box)
        add(union, max(m.density for m in members))
        if len(members) > 1:
            # Alone, a member shows what its stored copy shows when it is redundant.
            alone = [m for m in members if not m.redundant]
            alone.sort(key=lambda m: -(m.box[2] - m.box[0]) * (m.box[3] - m.box[1]))
            for m in alone[:_MAX_MEMBERS_ALONE]:
                add(m.box, m.density)
    return out


@dataclass(frozen=True, slots=True)
class Hints:
    """What the pass over the stored objects (pdf.py) learnt that helps here."""

    # SHA-256 of the raw data of stored images already passed on that viewers draw as
    # stored: an image drawn whole with nothing painted over it is not rendered again.
    plain: frozenset[bytes] = frozenset()
    # A trailer naming the catalog, appended when PDFium cannot open the file as it is (a
    # file cut off before its cross-reference table and trailer: PDFium then rebuilds the
    # table by scanning, as MuPDF repairs such files by itself).
    trailer: bytes | None = None
    # Pages (from 0) whose tiling patterns paint images (or that hold a mesh shading, on
    # its own or as a shading pattern): a viewer shows those images
    # wherever a path is filled with the pattern, and PDFium lists no image object there,
    # so large filled paths (and shadings) on these pages are regions too.
    pattern_pages: frozenset[int] = frozenset()
    # Raw data (SHA-256) of images with a soft or image mask -> the mask's pixel size: the
    # region is rendered as finely as the mask when it is finer than the image (a black
    # 8 x 8 image whose soft mask is a photo shows the photo at the mask's resolution).
    masks: Mapping[bytes, tuple[int, int]] = field(default_factory=dict)


def _open(data: bytes, trailer: bytes | None) -> Any:
    import pypdfium2 as pdfium

    attempts = [(data, None), (data, "")]  # "": an empty user password PDFium did not try
    if trailer:
        attempts.append((data + trailer, None))
    first: Exception | None = None
    for content, password in attempts:
        try:
            return pdfium.PdfDocument(content, password=password)
        except pdfium.PdfiumError as exc:
            first = first or exc
    raise CannotOpen(f"PDFium: {first}"[:200])


def regions(ctx: Context, node: PayloadNode, hints: Hints = Hints()) -> Iterator[PayloadNode]:
    """PNG renderings of the regions where the PDF at `node` draws images. Raises CannotOpen
    (before yielding anything) when PDFium cannot read the document."""
    doc = _open(node.data, hints.trailer)
    try:
        yield from _render_document(ctx, node, doc, hints.plain, hints.pattern_pages,
                                    hints.masks)
    finally:
        doc.close()


def _render_document(ctx: Context, node: PayloadNode, doc: Any, plain: frozenset[bytes],
                     pattern_pages: frozenset[int],
                     masks: Mapping[bytes, tuple[int, int]] | None = None,
                     ) -> Iterator[PayloadNode]:
    limits = ctx.limits
    start = time.monotonic()
    deadline = start + limits.pdf_render_deadline
    pixels_left = limits.pdf_render_max_pixels
    objects_left = [_MAX_OBJECTS]
    pages = len(doc)
    rendered_pages = 0
    rendered: set[bytes] = set()
    containers = (*node.containers, sniff.PDF)

    def stop(index: int, why: str) -> None:
        ctx.skip(node.path, core.PAGES_PAST_LIMIT,
                 f"pages {index + 1}-{pages} of {pages} not rendered: {why}")

    for index in range(pages):
        if time.monotonic() > deadline:
            stop(index, f"deadline of {limits.pdf_render_deadline:g} s")
            return
        try:
            page = _load_flattened(doc, index)
        except Exception as exc:
            ctx.defect(member_path(node.path, f"page-{index + 1}"),
                       f"pdf-page-unreadable:{type(exc).__name__}")
            continue
        try:
            if page.get_rotation():
                page.set_rotation(0)  # PDQ looks at all 8 orientations; crops stay simple
            left, bottom, right, top = (float(v) for v in page.get_bbox())
            page_box: Box = (left, bottom, right, top)
            try:
                found = _page_objects(page, page_box, objects_left, deadline,
                                      index in pattern_pages)
            except _OutOfTime as exc:
                stop(index, str(exc))
                return
            annotated = _annotated(page)
            vector_boxes = found.vectors.regions() if found.vectors is not None else []
            if len(vector_boxes) > _MAX_VECTOR_REGIONS:
                ctx.skip(member_path(node.path, f"page-{index + 1}"), core.PAGES_PAST_LIMIT,
                         f"{len(vector_boxes) - _MAX_VECTOR_REGIONS} of {len(vector_boxes)} "
                         "regions drawn with paths not rendered")
                del vector_boxes[_MAX_VECTOR_REGIONS:]
            if not found.images and not vector_boxes:
                continue
            _mark_redundant(found, plain, annotated)
            if masks:
                _mask_density(found, masks)
            huge = [p for p in found.images if p.pixels > _MAX_IMAGE_PIXELS and not p.redundant]
            if huge:
                # PDFium would decode each at full size to draw it: a memory and time bomb.
                ctx.skip(member_path(node.path, f"page-{index + 1}"), core.PAGES_PAST_LIMIT,
                         f"{len(huge)} image(s) of more than {_MAX_IMAGE_PIXELS} pixels "
                         "not rendered")
                found.images = [p for p in found.images if p.pixels <= _MAX_IMAGE_PIXELS]
            # A picture drawn with paths is rendered as an image would be (with the images
            # it touches, as one group); its seq (0) is never "painted over" anything.
            found.images += [_Placement(box, _VECTOR_DENSITY, False, 0, None, False, 0)
                             for box in vector_boxes]
            boxes = _regions(found.images)
            if not boxes:
                continue
            rendered_pages += 1
            if rendered_pages > limits.pdf_render_max_pages:
                stop(index, f"more than {limits.pdf_render_max_pages} pages with images")
                return
            for number, (box, density) in enumerate(boxes, 1):
                path = member_path(node.path, f"page-{index + 1}-region-{number}.png")
                long_pt = max(box[2] - box[0], box[3] - box[1])
                scale = min(density, limits.pdf_render_max_side / long_pt)
                width = math.ceil((box[2] - box[0]) * scale)
                height = math.ceil((box[3] - box[1]) * scale)
                if min(width, height) < _MIN_REGION_SIDE:
                    continue
                if width * height > pixels_left:
                    stop(index, f"more than {limits.pdf_render_max_pixels} pixels rendered")
                    return
                if time.monotonic() > deadline:
                    stop(index, f"deadline of {limits.pdf_render_deadline:g} s")
                    return
                pixels_left -= width * height
                png = _render(page, page_box, box, scale)
                if png is None:
                    ctx.skip(path, core.PARSE_ERROR, "PDFium could not render the region")
                    continue
                digest = hashlib.sha256(png).digest()
                if digest in rendered:
                    continue  # the same picture again (a letterhead, a repeated page)
                rendered.add(digest)
                if not ctx.fits(path, len(png)):
                    return
                ctx.charge(len(png))
                yield PayloadNode(path, containers, png, path.rsplit("/", 1)[-1], "image/png")
        finally:
            page.close()


def _render(page: Any, page_box: Box, box: Box, scale: float) -> bytes | None:
    """The region `box` of the page at `scale` pixels per point, as a PNG file."""
    left, bottom, right, top = page_box
    crop = (box[0] - left, box[1] - bottom, right - box[2], top - box[3])
    try:
        bitmap = page.render(scale=scale, crop=tuple(max(0.0, c) for c in crop),
                             draw_annots=True)
        image = bitmap.to_pil()
    except Exception:
        return None
    out = io.BytesIO()
    # Grey: every perceptual hash is computed on luma (PDQ's coefficients, which are
    # Pillow's), and a grey PNG is a third of the bytes and of the time of an RGB one.
    image.convert("L").save(out, format="PNG", compress_level=1)
    return out.getvalue()
