import io

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dnd.data import shards
from dnd.data.render import PageLayout, RenderConfig
from dnd.data.splits import SplitConfig, assign_splits, unit_interval

PROSE = (
    "Residual quantization describes every feature vector by a short stack of codes drawn from one "
    "shared codebook, each code correcting what the codes before it left over. "
) * 6 + "Antidisestablishmentarianism_and_an_unbreakably_long_identifier_that_cannot_fit_on_one_line ends it."


@pytest.fixture(scope="module")
def layout():
    return PageLayout(RenderConfig())


def test_pages_keep_every_word_in_order(layout):
    pages = layout.pages(PROSE)
    assert len(pages) >= 2, "this prose must overflow one 512 px page at 32 px"
    drawn = " ".join(" ".join(lines) for lines in pages).split()
    original = PROSE.split()
    # A word wider than a line is broken into pieces; glue the pieces back before comparing.
    assert "".join(drawn) == "".join(original)
    assert drawn[: len(original) - 3] == original[: len(original) - 3]
    assert drawn[-2:] == ["ends", "it."]


def test_lines_fit_the_text_box(layout):
    for lines in layout.pages(PROSE):
        assert len(lines) <= layout.lines_per_page
        for line in lines:
            assert layout.font.getlength(line) <= layout.cfg.text_width


def test_paper_geometry_fits_about_fifty_words(layout):
    words_on_first_page = sum(len(line.split()) for line in layout.pages(PROSE)[0])
    assert 35 <= words_on_first_page <= 70


def test_drawn_page_has_ink_only_inside_margins(layout):
    image = layout.draw(layout.pages(PROSE)[0])
    assert image.size == (512, 512) and image.mode == "L"
    left, top, right, bottom = Image.eval(image, lambda v: 255 - v).getbbox()
    margin = layout.cfg.margin
    assert left >= margin and top >= margin - 2 and right <= 512 - margin and bottom <= 512 - margin


def test_rendering_is_deterministic(layout):
    lines = layout.pages(PROSE)[0]
    assert shards.encode_png(layout.draw(lines)) == shards.encode_png(PageLayout(RenderConfig()).draw(lines))


def test_missing_font_names_the_setting():
    with pytest.raises(FileNotFoundError, match="data.text_image.render.font"):
        PageLayout(RenderConfig(font="/nonexistent/font.ttf"))


def test_split_is_stable_and_capped():
    counts = {f"Article {i}": 2 for i in range(400)}
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.2, test_max_images=20)
    splits = assign_splits(counts, cfg)
    assert splits == assign_splits(dict(reversed(list(counts.items()))), cfg), "order of input must not matter"
    test_images = sum(counts[k] for k, s in splits.items() if s == "test")
    assert test_images == 20
    # Adding other articles never moves an existing article's split (the cap aside).
    more = dict(counts, **{f"Other {i}": 2 for i in range(50)})
    uncapped = SplitConfig(val_fraction=0.1, test_fraction=0.2, test_max_images=None)
    before, after = assign_splits(counts, uncapped), assign_splits(more, uncapped)
    assert all(before[k] == after[k] for k in counts)
    assert all((s == "test") == (unit_interval(k) < 0.2) for k, s in before.items())


def test_shard_round_trip(tmp_path):
    layout = PageLayout(RenderConfig(size=128, font_size=12, margin=6))
    records = [
        {"id": f"a-{i}", "png": shards.encode_png(layout.draw(["line", str(i)])), "text": f"line\n{i}", "title": "A", "split": "train"}
        for i in range(3)
    ]
    path = tmp_path / "train" / shards.shard_name(0, 1)
    shards.write_shard(path, records, shards.image_schema())
    back = list(shards.iter_records(tmp_path, "train"))
    assert back == records
    assert shards.decode_png(back[0]["png"]).size == (128, 128)
    assert pq.read_schema(path).names == ["id", "png", "text", "title", "split"]
    empty = tmp_path / "val" / shards.shard_name(0, 1)
    shards.write_shard(empty, [], shards.image_schema())
    assert pq.read_table(empty).num_rows == 0


# ---------------------------------------------------------------- characters the font cannot draw
MIXED = "Punjabi (ਪੰਜਾਬੀ) and Hindi हिन्दी sit beside 中文 in an English sentence, zero\u2066width isolate."


def test_drawable_drops_words_the_font_cannot_draw(layout):
    # The fixture is real: DejaVu Sans has no Gurmukhi, Devanagari or CJK glyph (Pillow would draw boxes).
    assert not {ord(c) for c in "ਪ ह 中".split()} & layout.codepoints
    drawable = layout.drawable(MIXED)
    assert drawable.text == "Punjabi and Hindi sit beside in an English sentence, zerowidth isolate."
    assert drawable.dropped_words == 3
    assert drawable.dropped_chars == len("(ਪੰਜਾਬੀ)") + len("हिन्दी") + len("中文") + 1  # + the isolate mark
    assert set(drawable.missing) == set("ਪੰਜਾਬੀहिन्दी中文\u2066")
    assert all(ord(c) in layout.codepoints for c in drawable.text)  # the label is exactly what is drawn
    assert layout.drawable(PROSE) == (PROSE, 0, 0, "")  # text the font covers passes untouched


def test_scripts_needing_shaping_are_dropped_without_raqm():
    layout = PageLayout(RenderConfig())
    arabic = "Cairo (القاهرة) is large."
    assert layout.drawable(arabic).text == arabic if layout.shapes else "Cairo is large."
    layout.shapes, layout._char_ok = False, {" ": True}  # as Pillow without raqm draws: unshaped, left to right
    assert layout.drawable(arabic) == ("Cairo is large.", 1, len("(القاهرة)"), "القهرة")  # distinct, in order


def test_render_stage_counts_and_names_undrawable_characters(tmp_path, caplog):
    import json
    import logging

    import pyarrow as pa

    from dnd.data.splits import key_hash
    from dnd.stages.text_image import CHUNK_SCHEMA, TextImageConfig, render_text_images

    chunks = tmp_path / "chunks.parquet"
    texts = {"Mixed": MIXED, "Plain": PROSE[:200], "Only CJK": "中文 日本語"}
    rows = {"title": list(texts), "title_hash": [key_hash(t) for t in texts], "chunk": [0] * 3, "text": list(texts.values())}
    pq.write_table(pa.Table.from_pydict(rows, schema=CHUNK_SCHEMA), chunks)
    cfg = TextImageConfig(render=RenderConfig(size=256, font_size=16, margin=8), shards=1,
                          splits=SplitConfig(val_fraction=0.0, test_fraction=0.0, test_max_images=None))
    with caplog.at_level(logging.INFO):
        render_text_images(cfg, chunks, tmp_path / "out", tmp_path / "work")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    stats = manifest["stats"]
    assert (stats["undrawable_words"], stats["undrawable_chunks"], stats["chunks_with_undrawable_text"]) == (5, 1, 2)
    assert manifest["undrawable_characters"]["U+4E2D"] == 2 and manifest["undrawable_characters"]["U+0A2A"] == 1
    records = [r for split in shards.SPLITS for r in shards.iter_records(tmp_path / "out", split)]
    labels = {r["title"]: " ".join(r["text"].split()) for r in records}
    assert labels == {"Mixed": layout_text(MIXED), "Plain": " ".join(PROSE[:200].split())}  # nothing else lost
    assert any(r.levelname == "WARNING" and "U+4E2D '中'" in r.getMessage() for r in caplog.records)


def layout_text(text: str) -> str:
    return PageLayout(RenderConfig(size=256, font_size=16, margin=8)).drawable(text).text


# ---------------------------------------------------------------- the line set (render.layout: line)
LINE_CFG = RenderConfig(size=64, font_size=16, margin=2, layout="line")


def test_line_layout_draws_each_line_centred_with_its_exact_label():
    layout = PageLayout(LINE_CFG)
    pages = layout.pages(PROSE[:300])
    assert all(len(lines) == 1 for lines in pages) and len(pages) > 10
    assert "".join(lines[0].replace(" ", "") for lines in pages) == PROSE[:300].replace(" ", "")  # every character, in order
    for lines in pages[:5]:
        image = layout.draw(lines)
        assert image.size == (64, 64) and image.mode == "L"
        left, top, right, bottom = Image.eval(image, lambda v: 255 - v).getbbox()
        assert left >= 2 and right <= 62 and layout.font.getlength(lines[0]) <= 60
        assert abs((top + bottom) / 2 - 32) <= 6  # mid-image, not at the top margin
    assert shards.encode_png(layout.draw(pages[0])) == shards.encode_png(PageLayout(LINE_CFG).draw(pages[0]))
    with pytest.raises(ValueError, match="render.layout"):
        RenderConfig(layout="column")


def test_line_set_stage_caps_lines_per_chunk_and_is_deterministic(tmp_path):
    import pyarrow as pa

    from dnd.data.splits import key_hash
    from dnd.stages.text_image import CHUNK_SCHEMA, TextImageConfig, render_text_images

    chunks = tmp_path / "chunks.parquet"
    texts = {"Alpha": PROSE[:200], "Beta": PROSE[200:260]}
    rows = {"title": list(texts), "title_hash": [key_hash(t) for t in texts], "chunk": [0, 0], "text": list(texts.values())}
    pq.write_table(pa.Table.from_pydict(rows, schema=CHUNK_SCHEMA), chunks)
    cfg = TextImageConfig(render=LINE_CFG, shards=1, max_images_per_chunk=5,
                          splits=SplitConfig(val_fraction=0.0, test_fraction=0.0, test_max_images=None))
    runs = []
    for run in ("a", "b"):
        render_text_images(cfg, chunks, tmp_path / run, tmp_path / f"work-{run}")
        runs.append(list(shards.iter_records(tmp_path / run, "train")))
    assert runs[0] == runs[1]  # same chunks and config: same bytes
    lines = PageLayout(LINE_CFG).lines
    for title, text in texts.items():
        records = [r for r in runs[0] if r["title"] == title]
        assert [r["text"] for r in records] == lines(text)[:5]  # the first 5 lines, each label its drawn line
        assert all(shards.decode_png(r["png"]).size == (64, 64) for r in records)
