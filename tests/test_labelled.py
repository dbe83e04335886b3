"""The class-labelled image set: digits written as an image folder, read back with labels."""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dnd.data.labelled import LabelledConfig, iter_image_folder, resize_center_crop, write_digits_image_folder

log = logging.getLogger("test_labelled")


def read(root: Path, cfg: LabelledConfig) -> tuple[list[dict], Counter]:
    stats: Counter = Counter()
    return list(iter_image_folder(root, cfg, stats, log)), stats


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits_image_folder(tmp_path_factory.mktemp("digits") / "tree", per_class=3, upscale_to=16)


def test_digits_round_trip_keeps_labels_and_counts(digits: Path) -> None:
    assert sorted(p.name for p in digits.iterdir()) == [str(d) for d in range(10)]
    records, stats = read(digits, LabelledConfig(size=16))
    assert stats == Counter(images=30)
    assert Counter(r["label"] for r in records) == {label: 3 for label in range(10)}
    for record in records:
        folder = record["id"].split("/")[0]
        assert record["label"] == int(folder) == int(record["title"]) and record["text"] == ""
        image = Image.open(io.BytesIO(record["png"]))
        assert image.size == (16, 16) and image.mode == "RGB"
        assert np.asarray(image).max() > 128  # a bright stroke survived the round trip
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)  # a fixed reading order


def test_grayscale_and_resize(digits: Path) -> None:
    records, _ = read(digits, LabelledConfig(size=24, grayscale=True))
    image = Image.open(io.BytesIO(records[0]["png"]))
    assert image.mode == "L" and image.size == (24, 24)


def test_corrupt_files_are_skipped_and_counted(tmp_path: Path, digits: Path, caplog) -> None:
    root = tmp_path / "tree"
    for folder in digits.iterdir():
        (root / folder.name).mkdir(parents=True)
        for path in folder.iterdir():
            (root / folder.name / path.name).write_bytes(path.read_bytes())
    good = next((root / "3").iterdir()).read_bytes()
    (root / "3" / "9998.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "3" / "9999.png").write_bytes(b"not an image at all")
    (root / "3" / "README.txt").write_text("notes")
    with caplog.at_level(logging.WARNING, logger=log.name):
        records, stats = read(root, LabelledConfig(size=16))
    assert stats == Counter({"images": 30, "skipped_image:unreadable": 2, "ignored_file": 1})
    assert len(records) == 30 and "9998.png" in caplog.text and "9999.png" in caplog.text


def test_labels_follow_sorted_class_names(tmp_path: Path) -> None:
    for name, shade in (("zebra", 0), ("ant", 255), ("moth", 128)):
        (tmp_path / name).mkdir()
        Image.new("L", (8, 8), shade).save(tmp_path / name / "x.png")
    records, _ = read(tmp_path, LabelledConfig(size=8, grayscale=True))
    assert [(r["title"], r["label"]) for r in records] == [("ant", 0), ("moth", 1), ("zebra", 2)]


def test_resize_center_crop_keeps_the_centre() -> None:
    stripes = np.zeros((20, 40, 3), np.uint8)  # (H, W, C): red sides, blue middle half
    stripes[:, :10, 0] = stripes[:, 30:, 0] = 255
    stripes[:, 10:30, 2] = 255
    out = np.asarray(resize_center_crop(Image.fromarray(stripes), 10))
    assert out.shape == (10, 10, 3)
    assert (out[..., 2] > 200).all() and (out[..., 0] < 60).all()
    big = resize_center_crop(Image.new("RGB", (1000, 600), "white"), 100)  # box-halved twice, then bicubic
    assert big.size == (100, 100)


def test_digits_folder_is_deterministic(tmp_path: Path, digits: Path) -> None:
    again = write_digits_image_folder(tmp_path / "again", per_class=3, upscale_to=16)
    files = sorted(p.relative_to(digits) for p in digits.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((digits / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert read(digits, LabelledConfig(size=16))[0] == read(again, LabelledConfig(size=16))[0]
