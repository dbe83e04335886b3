"""arXiv-Image rasterization: crop geometry, clipped text, paper ids, broken files, determinism."""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from dnd.data.demo_pdfs import write_demo_pdfs
from dnd.data.pdf import TEXT_FLAGS, RasterConfig, paper_id_from, rasterize_pdf

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
log = logging.getLogger("test_pdf")


def data_dir(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real test PDFs not found at {path} (expected ../shared/data beside the repository)")
    return path


def rasterize(path: Path, cfg: RasterConfig) -> tuple[list[dict], Counter]:
    stats: Counter = Counter()
    return list(rasterize_pdf(path, cfg, stats, log)), stats


def decode(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def words(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- paper ids
@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("2004.04906v1.pdf", None, "2004.04906"),
        ("2004.04906v3.pdf", None, "2004.04906"),
        ("arxiv-2004.04906v3_dense-passage-retrieval.pdf", None, "2004.04906"),
        ("0908.0054.pdf", None, "0908.0054"),
        ("hep-th_9901001v2.pdf", None, "hep-th/9901001"),
        ("hep-th_9901001.pdf", None, "hep-th/9901001"),
        ("math.AG_0601001v1.pdf", None, "math/0601001"),
        ("paper.pdf", "arXiv:2004.04906v3  [cs.CL]  30 Sep 2020\nDense Passage Retrieval", "2004.04906"),
        ("paper.pdf", "arXiv:hep-th/9901001v2 15 Jan 1999", "hep-th/9901001"),
        ("paper.pdf", "Proceedings 2017, pages 1912.1-7", "paper"),
        ("paper.pdf", None, "paper"),
    ],
)
def test_paper_id_from_drops_versions(name: str, text: str | None, expected: str) -> None:
    assert paper_id_from(Path("/papers") / name, text) == expected


# ---------------------------------------------------------------- crop geometry and clipped text
def two_word_pdf(path: Path, rotation: int = 0) -> None:
    """A letter page with one word near the top and one near the bottom (unrotated coordinates)."""
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    page.insert_text((100, 100), "zebraword", fontsize=24)
    page.insert_text((100, 700), "quokkaword", fontsize=24)
    page.set_rotation(rotation)
    doc.save(path)


def test_word_lands_in_its_top_square_crop_text_and_pixels(tmp_path: Path) -> None:
    pdf = tmp_path / "words.pdf"
    two_word_pdf(pdf)
    records, stats = rasterize(pdf, RasterConfig(dpi=72, size=256))
    # Width 612 pt → 256 px: tiles are 612 pt tall, so y=100 is in tile 0 and y=700 in tile 1.
    assert [r["crop"] for r in records] == [0, 1]
    assert "zebraword" in records[0]["text"] and "quokkaword" not in records[0]["text"]
    assert "quokkaword" in records[1]["text"] and "zebraword" not in records[1]["text"]
    scale = 256 / 612
    for record, baseline in zip(records, (100 * scale, (700 - 612) * scale)):
        pixels = np.asarray(decode(record["png"]).convert("L"))
        assert pixels.shape == (256, 256)
        ink_rows = np.flatnonzero((pixels < 128).any(axis=1))
        assert baseline - 12 < ink_rows.min() and ink_rows.max() < baseline + 4  # the word sits on its baseline
    assert (np.asarray(decode(records[1]["png"]))[-20:] == 255).all()  # the last tile is padded white
    assert stats["pages"] == 1 and stats["images"] == 2 and stats["file_ok"] == 1


@pytest.mark.parametrize("rotation", [0, 90])
def test_tiles_crop_text_follows_the_displayed_page(tmp_path: Path, rotation: int) -> None:
    pdf = tmp_path / "words.pdf"
    two_word_pdf(pdf, rotation)
    records, stats = rasterize(pdf, RasterConfig(dpi=72, size=256, crop="tiles"))
    page = pymupdf.open(pdf)[0]
    columns = -(-int(page.rect.width) // 256)
    for word, origin in (("zebraword", (110, 95)), ("quokkaword", (110, 695))):
        shown = pymupdf.Point(origin) * page.rotation_matrix  # where the word appears on the rendered page
        expected = int(shown.y // 256) * columns + int(shown.x // 256)
        assert [r["crop"] for r in records if word in r["text"]] == [expected]
    assert stats["images"] == 2 and stats["blank_crops"] == columns * -(-int(page.rect.height) // 256) - 2


def test_full_page_pad_keeps_the_whole_page(tmp_path: Path) -> None:
    pdf = tmp_path / "words.pdf"
    two_word_pdf(pdf)
    (record,), _ = rasterize(pdf, RasterConfig(dpi=72, size=128, crop="full_page_pad", grayscale=True))
    image = decode(record["png"])
    assert image.mode == "L" and image.size == (128, 128)
    assert record["text"] == "zebraword quokkaword"
    assert (np.asarray(image)[:, :10] == 255).all()  # a portrait page leaves white bars left and right


def test_real_papers_render_with_text_clipped_to_each_crop() -> None:
    papers = sorted(data_dir("arxiv").glob("*.pdf"))
    cfg = RasterConfig(max_pages_per_paper=2)
    for path in papers:
        records, stats = rasterize(path, cfg)
        assert stats["file_ok"] == 1 and stats["pages"] == 2, (path.name, stats)
        assert records and not any(r["repaired"] for r in records)
        doc = pymupdf.open(path)
        for record in records:
            assert record["paper_id"] in path.name and record["title"] == record["paper_id"]
            assert record["id"] == f"{record['paper_id']}/p{record['page']:04d}/c{record['crop']}"
            image = decode(record["png"])
            assert image.size == (512, 512) and image.mode == "RGB"
            page = doc[record["page"]]
            side = page.rect.width  # a square tile of a page resized to the tile's width: one page width tall
            top = record["crop"] * side
            clip = pymupdf.Rect(0, top, side, min(top + side, page.rect.height))
            assert record["text"] == words(page.get_text("text", clip=clip, flags=TEXT_FLAGS))
            inside = clip + (0, 2, 0, -2)
            for x0, y0, x1, y1, word, *_ in page.get_text("words", flags=TEXT_FLAGS):
                if pymupdf.Rect(x0, y0, x1, y1) in inside:
                    assert word in record["text"], (path.name, record["id"], word)
        first_tiles = [r["text"] for r in records if r["page"] == 0]
        assert len(set(first_tiles)) == len(first_tiles)  # each crop has its own text


def test_short_real_paper_all_pages() -> None:
    path = data_dir("arxiv") / "arxiv-0908.0054v1_astro-dark-matter-cmb.pdf"
    records, stats = rasterize(path, RasterConfig(dpi=72, size=256))
    assert stats["pages"] == pymupdf.open(path).page_count == 4
    assert {r["page"] for r in records} == {0, 1, 2, 3}
    assert stats["images"] == len(records) and stats["file_ok"] == 1


# ---------------------------------------------------------------- broken files
BROKEN = {
    "zero-bytes_nothing.pdf": {"skipped_file:empty": 1},
    "not-a-pdf_git-symlink-text_warmup.pdf": {"skipped_file:not_a_pdf": 1},
    "encrypted-user-password-test_password-example.pdf": {"skipped_file:encrypted": 1},
    "page-count-raises_poppler-67295-0.pdf": {"skipped_file:page_count": 1},
    "zero-pages_empty.pdf": {"skipped_file:zero_pages": 1},
    "truncated_no-xref-trailer_scan-bad.pdf": {"file_ok": 1, "repaired_file": 1, "pages": 1},
    "page-tree-cycle_Pages-tree-refs.pdf": {"file_ok": 1, "skipped_page:load_page": 1, "pages": 1},
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_pdf_is_skipped_or_kept_as_specified(name: str, caplog, capfd) -> None:
    path = data_dir("arxiv-broken") / name
    with caplog.at_level(logging.WARNING, logger=log.name):
        records, stats = rasterize(path, RasterConfig(dpi=72, size=256))
    for key, count in BROKEN[name].items():
        assert stats[key] == count, (key, stats)
    ends = [key for key in stats if key == "file_ok" or key.startswith("skipped_file:")]
    assert len(ends) == 1 and stats[ends[0]] == 1  # every file ends exactly one way
    assert stats["images"] == len(records)
    assert str(path) in caplog.text  # the warning names the file
    assert capfd.readouterr().err == ""  # MuPDF's own messages go to the log, not stderr
    if name.startswith("truncated"):
        assert records and all(r["repaired"] for r in records)
    if name.startswith("page-tree-cycle"):
        assert {r["page"] for r in records} == {0} and "page 1" in caplog.text


def test_missing_and_unrepairable_files_are_skipped(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.7\ngarbage\n")
    stats: Counter = Counter()
    for path in (tmp_path / "missing.pdf", garbage):
        assert list(rasterize_pdf(path, RasterConfig(), stats, log)) == []
    assert stats == Counter({"skipped_file:unreadable": 1, "skipped_file:unrepairable": 1})


# ---------------------------------------------------------------- demo PDFs and determinism
def test_demo_pdfs_are_deterministic_and_rasterize(tmp_path: Path) -> None:
    first = write_demo_pdfs(tmp_path / "a", n=3)
    second = write_demo_pdfs(tmp_path / "b", n=3)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert write_demo_pdfs(tmp_path / "c", n=1, seed=1)[0].read_bytes() != first[0].read_bytes()
    cfg = RasterConfig(dpi=72, size=256)
    for path, pages in zip(first, (2, 3, 4)):
        doc = pymupdf.open(path)
        assert doc.page_count == pages and doc.metadata["creationDate"] == ""
        records, stats = rasterize(path, cfg)
        assert stats["pages"] == pages and stats["file_ok"] == 1
        assert {r["paper_id"] for r in records} == {path.name.removesuffix("v1.pdf")}
        first_tile = records[0]["text"]
        assert f"arXiv:{records[0]['paper_id']}v1" in first_tile  # the stamp, read from the text layer
        assert "Abstract" in first_tile and "1 Introduction" in first_tile
        again, _ = rasterize(path, cfg)
        assert [r["png"] for r in again] == [r["png"] for r in records]


def test_real_paper_rasterizes_to_the_same_bytes_twice() -> None:
    path = data_dir("arxiv") / "arxiv-2202.00535v1_paraphrase-generation.pdf"
    cfg = RasterConfig(max_pages_per_paper=1)
    first, _ = rasterize(path, cfg)
    second, _ = rasterize(path, cfg)
    assert first == second


def test_unknown_crop_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="crop"):
        RasterConfig(crop="centre")
