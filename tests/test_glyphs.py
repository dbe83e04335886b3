"""The demo's class-labelled set: confusable capital letters rendered in matplotlib's fonts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dnd.data.glyphs import DEFAULT_CLASSES, DEFAULT_FONTS, DemoGlyphsConfig, matplotlib_font_dir, write_glyph_image_folder

SMALL = DemoGlyphsConfig(per_class=len(DEFAULT_FONTS), size=32, seed=0)  # every font once per class


def pixels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path), dtype=np.float32) for path in sorted(folder.iterdir())])


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_glyph_image_folder(tmp_path_factory.mktemp("glyphs") / "tree", SMALL)


def test_same_config_same_bytes_and_the_seed_matters(tree, tmp_path):
    again = write_glyph_image_folder(tmp_path / "again", SMALL)
    files = sorted(p.relative_to(tree) for p in tree.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((tree / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = write_glyph_image_folder(tmp_path / "other", DemoGlyphsConfig(classes="BE", per_class=3, seed=1))
    assert (other / "B" / files[0].name).read_bytes() != (tree / files[0]).read_bytes()


def test_the_classes_and_fonts_it_claims(tree):
    assert DEFAULT_CLASSES == "BCDEFGOPQR" and all((matplotlib_font_dir() / font).is_file() for font in DEFAULT_FONTS)
    assert sorted(p.name for p in tree.iterdir()) == sorted(DEFAULT_CLASSES)
    for folder in tree.iterdir():
        names = sorted(p.name for p in folder.iterdir())
        assert len(names) == SMALL.per_class
        # fonts in turn: image i is drawn in font i mod 16, named in the file
        assert names == [f"{i:05d}_{Path(DEFAULT_FONTS[i]).stem}.png" for i in range(SMALL.per_class)]
        image = Image.open(folder / names[0])
        assert image.mode == "L" and image.size == (32, 32)


def test_images_have_detail_and_classes_differ(tree):
    means = {}
    for folder in tree.iterdir():
        images = pixels(folder)
        assert (images.max(axis=(1, 2)) > 150).all() and (images.min(axis=(1, 2)) < 45).all()  # bright glyph, dark ground
        ink = (images > 100).mean(axis=(1, 2))
        assert (ink > 0.03).all() and (ink < 0.5).all()  # neither blank nor a filled square
        assert len({image.tobytes() for image in images}) == len(images)  # random size, position, rotation
        means[folder.name] = images.mean(axis=0)
    # the confusable pairs still differ on average (E/F by the lower arm, P/R by the leg, O/Q by the tail)
    for a, b in [("E", "F"), ("P", "R"), ("O", "Q"), ("C", "G")]:
        assert np.abs(means[a] - means[b]).mean() > 2.0, (a, b)


def test_config_is_checked():
    for bad in [dict(classes="BB"), dict(classes="B/"), dict(fonts=()), dict(min_height=0.9, max_height=0.5)]:
        with pytest.raises(ValueError, match="demo.glyphs"):
            DemoGlyphsConfig(**bad)
