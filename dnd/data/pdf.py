"""arXiv-Image: rasterize PDF pages with PyMuPDF, each crop paired with the text layer inside it.

Real PDFs break in quiet ways: empty or foreign files, user passwords, page trees that raise only when
a page is loaded, files MuPDF repairs behind our back. A bad file or page is skipped, counted in
`stats` (`skipped_file:<reason>`, `skipped_page:<step>`) and logged by name; it never stops the stage
nor costs the good pages around it. Every file ends as exactly one of `file_ok` or `skipped_file:*`.
Pages without a text layer (scans, image-only PDFs, an image file named `.pdf`, which MuPDF opens as
a one-page document) give no crop with text: they are counted (`no_text_layer_page`) and named at
WARNING, and a file that yields no image at all ends as `skipped_file:no_image`, not as fine.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pymupdf
from PIL import Image

from dnd.data.shards import encode_png

CROP_MODES = ("top_square", "full_page_pad", "tiles")
# MuPDF's plain-text defaults, but ligatures expanded: OCR reads "ﬁ" as "fi".
TEXT_FLAGS = pymupdf.TEXTFLAGS_TEXT & ~pymupdf.TEXT_PRESERVE_LIGATURES
WHITE = 255


@dataclass(frozen=True)
class RasterConfig:
    dpi: int = 144  # render resolution; crops are Lanczos-resampled from it (144 dpi supersamples 512 px)
    size: int = 512  # output image side in pixels (the paper's arXiv512)
    # How a page becomes size×size images:
    #   "top_square"    page width resized to `size`, then consecutive size-tall tiles from the top down,
    #                   the last one padded white: the page as a reader sees it at that width (default)
    #   "full_page_pad" the whole page fitted into size×size, centred on white (layout, tiny text)
    #   "tiles"         non-overlapping size×size tiles of the page rendered at `dpi`, edges padded white
    crop: str = "top_square"
    max_pages_per_paper: int | None = None  # render only the first pages; None = every page
    min_text_chars: int = 1  # crops whose clipped text is shorter are skipped as blank (and counted)
    grayscale: bool = False  # render 8-bit gray ("L") instead of RGB

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ValueError(f"data.arxiv_image.raster.crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.dpi <= 0 or self.size <= 0:
            raise ValueError(f"raster dpi and size must be positive, got dpi={self.dpi}, size={self.size}")
        if self.max_pages_per_paper is not None and self.max_pages_per_paper < 1:
            raise ValueError(f"max_pages_per_paper must be None or at least 1, got {self.max_pages_per_paper}")


# ---------------------------------------------------------------- paper ids
# Archives of pre-2007 identifiers ("hep-th/9901001"), longest first so "math-ph" wins over "math".
OLD_ARCHIVES = sorted(
    "acc-phys adap-org alg-geom ao-sci astro-ph atom-ph bayes-an chao-dyn chem-ph cmp-lg comp-gas cond-mat "
    "cs dg-ga funct-an gr-qc hep-ex hep-lat hep-ph hep-th math math-ph mtrl-th nlin nucl-ex nucl-th patt-sol "
    "physics plasm-ph q-alg q-bio quant-ph solv-int supr-con".split(),
    key=len,
    reverse=True,
)
# New style YYMM.NNNN (2007-14) or YYMM.NNNNN (2015-); the version suffix is dropped.
NEW_ID = r"(?<![\d.])(?P<new>\d{2}(?:0[1-9]|1[0-2])\.\d{4,5})(?:v\d+)?(?!\d)"
# Old style archive[.SC]/YYMMNNN; file names write "_" for "/"; the subject class is not part of the id.
OLD_ID = (
    rf"(?<![A-Za-z])(?P<archive>{'|'.join(map(re.escape, OLD_ARCHIVES))})(?:\.[A-Z]{{2}})?[/_]"
    r"(?P<number>\d{7})(?:v\d+)?(?!\d)"
)
ID_IN_NAME = re.compile(rf"{NEW_ID}|{OLD_ID}")
ID_IN_STAMP = re.compile(rf"arXiv:\s*(?:{NEW_ID}|{OLD_ID})")  # "arXiv:2004.04906v3 [cs.CL] 30 Sep 2020"


def _id_from_match(match: re.Match | None) -> str | None:
    if match is None:
        return None
    return match["new"] or f"{match['archive']}/{match['number']}"


def paper_id_from(path: Path, first_page_text: str | None) -> str:
    """arXiv id without version, so every version of a paper shares it: file name, else stamp, else stem."""
    return (
        _id_from_match(ID_IN_NAME.search(Path(path).stem))
        or _id_from_match(ID_IN_STAMP.search(first_page_text or ""))
        or Path(path).stem
    )


# ---------------------------------------------------------------- crops
@dataclass(frozen=True)
class Crop:
    image: Image.Image  # (size, size)
    clip: pymupdf.Rect  # the crop's area in unrotated PDF coordinates, as get_text(clip=) expects


def _pad_cut(canvas: Image.Image, left: int, top: int, size: int) -> Image.Image:
    """size×size window of `canvas` at (left, top); what lies outside the canvas is white."""
    tile = canvas.crop((left, top, left + size, top + size))
    if left + size <= canvas.width and top + size <= canvas.height:
        return tile
    padded = Image.new(canvas.mode, (size, size), WHITE if canvas.mode == "L" else (WHITE,) * 3)
    padded.paste(canvas.crop((left, top, min(left + size, canvas.width), min(top + size, canvas.height))), (0, 0))
    return padded


def _grid_crops(canvas: Image.Image, scale: float, page: pymupdf.Page, size: int) -> list[Crop]:
    """Row-major size×size tiles of a canvas drawn at `scale` pixels per PDF point."""
    crops = []
    for top in range(0, canvas.height, size):
        for left in range(0, canvas.width, size):
            box = pymupdf.Rect(left, top, left + size, top + size) / scale & page.rect
            crops.append(Crop(_pad_cut(canvas, left, top, size), box * page.derotation_matrix))
    return crops


def page_crops(page: pymupdf.Page, rendered: Image.Image, cfg: RasterConfig) -> list[Crop]:
    """Cut one rendered page (rotation applied, page.rect at dpi/72 px per point) into crops."""
    width, height = page.rect.width, page.rect.height
    if cfg.crop == "tiles":
        return _grid_crops(rendered, cfg.dpi / 72, page, cfg.size)
    if cfg.crop == "top_square":
        scale = cfg.size / width
        canvas = rendered.resize((cfg.size, max(1, round(height * scale))), Image.Resampling.LANCZOS)
        return _grid_crops(canvas, scale, page, cfg.size)
    scale = cfg.size / max(width, height)  # full_page_pad
    fitted = rendered.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new(fitted.mode, (cfg.size, cfg.size), WHITE if fitted.mode == "L" else (WHITE,) * 3)
    canvas.paste(fitted, ((cfg.size - fitted.width) // 2, (cfg.size - fitted.height) // 2))
    return [Crop(canvas, page.rect * page.derotation_matrix)]


def render_page(page: pymupdf.Page, cfg: RasterConfig) -> Image.Image:
    colorspace = pymupdf.csGRAY if cfg.grayscale else pymupdf.csRGB
    pixmap = page.get_pixmap(dpi=cfg.dpi, colorspace=colorspace, alpha=False)
    return Image.frombytes("L" if cfg.grayscale else "RGB", (pixmap.width, pixmap.height), pixmap.samples_mv)


def clipped_text(page: pymupdf.Page, clip: pymupdf.Rect) -> str:
    """The text layer inside `clip` (MuPDF keeps every character whose box meets it), whitespace normalised."""
    return " ".join(page.get_text("text", clip=clip, flags=TEXT_FLAGS).split())


# ---------------------------------------------------------------- files
class SkipFile(Exception):
    """A file that yields nothing; `reason` becomes the `skipped_file:<reason>` counter."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _head(path: Path) -> bytes:
    """The first KiB, where MuPDF looks for the "%PDF-" header (junk before it is allowed)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(1024)
    except OSError:
        return b""


def open_pdf(path: Path) -> tuple[pymupdf.Document, int]:
    """Open a PDF and read its page count, or raise SkipFile naming why it is unusable."""
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except pymupdf.EmptyFileError as err:
        raise SkipFile("empty", str(err)) from err
    except pymupdf.FileDataError as err:
        raise SkipFile("unrepairable" if b"%PDF-" in _head(path) else "not_a_pdf", str(err)) from err
    except (OSError, pymupdf.FileNotFoundError) as err:  # PyMuPDF's own not-found error is no OSError
        raise SkipFile("unreadable", str(err)) from err
    try:
        if doc.needs_pass:
            raise SkipFile("encrypted", "needs a user password")
        try:
            page_count = doc.page_count
        except Exception as err:  # MuPDF raises RuntimeError subclasses of many kinds here
            raise SkipFile("page_count", f"page_count raised {type(err).__name__}: {err}") from err
        if page_count == 0:
            raise SkipFile("zero_pages", "the document has no pages")
    except SkipFile:
        doc.close()
        raise
    return doc, page_count


class PageError(Exception):
    def __init__(self, step: str, error: Exception):
        super().__init__(f"{step} raised {type(error).__name__}: {error}")
        self.step = step


def _page_crops_with_text(doc: pymupdf.Document, index: int, cfg: RasterConfig) -> list[tuple[Crop, str]]:
    """Every crop of one page with its text, or PageError naming the step that failed."""
    step = "load_page"
    try:
        page = doc.load_page(index)
        step = "get_pixmap"
        crops = page_crops(page, render_page(page, cfg), cfg)
        step = "get_text"
        return [(crop, clipped_text(page, crop.clip)) for crop in crops]
    except Exception as err:  # a broken page can raise anything MuPDF knows; the step names it
        raise PageError(step, err) from err


def _flush_mupdf_messages(path: Path, log: logging.Logger) -> None:
    messages = pymupdf.TOOLS.mupdf_warnings(reset=True)
    if messages:
        log.warning("%s: MuPDF reported: %s", path, messages.replace("\n", " | "))


def rasterize_pdf(path: Path, cfg: RasterConfig, stats: Counter, log: logging.Logger) -> Iterator[dict[str, Any]]:
    """Yield one record per kept crop: id, png, text (inside the crop), title, paper_id, page, crop, repaired."""
    pymupdf.TOOLS.mupdf_display_errors(False)  # MuPDF's stderr chatter; its messages go to our log instead
    pymupdf.TOOLS.mupdf_warnings(reset=True)
    try:
        doc, page_count = open_pdf(path)
    except SkipFile as skip:
        stats[f"skipped_file:{skip.reason}"] += 1
        log.warning("%s: skipped file (%s): %s", path, skip.reason, skip)
        _flush_mupdf_messages(path, log)
        return
    with doc:
        repaired = bool(doc.is_repaired)
        if repaired:
            stats["repaired_file"] += 1
            log.warning("%s: MuPDF repaired the file while opening it; its pages are kept and flagged", path)
        paper_id = None
        pages_done = 0
        images_before = stats["images"]
        pages_without_text: list[int] = []
        for index in range(min(page_count, cfg.max_pages_per_paper or page_count)):
            try:
                crops = _page_crops_with_text(doc, index, cfg)
            except PageError as err:
                stats[f"skipped_page:{err.step}"] += 1
                log.warning("%s: skipped page %d: %s", path, index, err)
                continue
            if paper_id is None:
                paper_id = paper_id_from(path, " ".join(text for _, text in crops))
            stats["pages"] += 1
            pages_done += 1
            if not any(text for _, text in crops):
                pages_without_text.append(index)
            for crop_index, (crop, text) in enumerate(crops):
                if len(text) < cfg.min_text_chars:
                    stats["blank_crops"] += 1
                    continue
                stats["images"] += 1
                yield {
                    "id": f"{paper_id}/p{index:04d}/c{crop_index}",
                    "png": encode_png(crop.image),
                    "text": text,
                    "title": paper_id,
                    "paper_id": paper_id,
                    "page": index,
                    "crop": crop_index,
                    "repaired": repaired,
                }
        if pages_without_text:
            stats["no_text_layer_page"] += len(pages_without_text)
            kind = "" if doc.is_pdf else " (MuPDF read it as an image, not a PDF)"
            log.warning(
                "%s: %d of %d page(s) have no text layer%s (scanned or image-only), so no image from page(s) %s",
                path, len(pages_without_text), pages_done, kind, _page_list(pages_without_text),
            )
        if not pages_done:
            stats["skipped_file:no_readable_page"] += 1
            log.warning("%s: skipped file (no_readable_page): none of its pages could be rendered", path)
        elif stats["images"] == images_before:
            stats["skipped_file:no_image"] += 1
            log.warning("%s: skipped file (no_image): no crop holds text (min_text_chars=%d)", path, cfg.min_text_chars)
        else:
            stats["file_ok"] += 1
        _flush_mupdf_messages(path, log)


def _page_list(pages: list[int], shown: int = 20) -> str:
    return ", ".join(map(str, pages[:shown])) + (f", … ({len(pages) - shown} more)" if len(pages) > shown else "")
