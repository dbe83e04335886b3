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
