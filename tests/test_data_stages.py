"""The arXiv-Image and class-labelled stages end to end: real PDFs, broken PDFs, splits, determinism."""

import logging
import shutil
from pathlib import Path

import pytest

from dnd.data import shards
from dnd.data.demo_pdfs import write_demo_pdfs
from dnd.data.labelled import write_digits_image_folder
from dnd.data.pdf import RasterConfig
from dnd.data.splits import SplitConfig
from dnd.stages.arxiv_image import ArxivImageConfig, rasterize_pdfs
from dnd.stages.classes import ClassesConfig, prepare_images
from dnd.data.labelled import LabelledConfig
from testdata import shared_data

FAST = RasterConfig(dpi=36, size=128, max_pages_per_paper=2)


def test_real_and_broken_pdfs_finish_with_every_fault_counted(tmp_path, caplog):
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for folder in (shared_data("arxiv"), shared_data("arxiv-broken")):
        for pdf in folder.glob("*.pdf"):
            (pdfs / pdf.name).symlink_to(pdf)
    cfg = ArxivImageConfig(pdfs=str(pdfs), raster=FAST, shards=2, splits=SplitConfig(test_max_images=None))
    with caplog.at_level(logging.INFO):
        manifest = rasterize_pdfs(cfg, tmp_path / "out", tmp_path / "work")
    stats = manifest["stats"]
    assert manifest["pdfs"] == 15
    # 8 real papers + the truncated one (MuPDF repairs it) + the page-tree cycle (page 0 kept, page 1 skipped)
    assert stats["file_ok"] == 10
    assert stats["repaired_file"] == 1
    assert stats["skipped_page:load_page"] == 1
    skipped_files = {k: v for k, v in stats.items() if k.startswith("skipped_file:")}
    assert skipped_files == {"skipped_file:empty": 1, "skipped_file:not_a_pdf": 1, "skipped_file:encrypted": 1,
                             "skipped_file:page_count": 1, "skipped_file:zero_pages": 1}
    events = {Path(e["file"]).name: e["event"] for e in manifest["skipped_or_repaired"]}
    for name in ("zero-bytes_nothing.pdf", "not-a-pdf_git-symlink-text_warmup.pdf", "zero-pages_empty.pdf",
                 "encrypted-user-password-test_password-example.pdf", "page-count-raises_poppler-67295-0.pdf",
                 "page-tree-cycle_Pages-tree-refs.pdf", "truncated_no-xref-trailer_scan-bad.pdf"):
        assert name in events, f"{name} must be named in the summary"
        assert name in caplog.text, f"{name} must be named in the log"
    records = [r for split in shards.SPLITS for r in shards.iter_records(tmp_path / "out", split)]
    papers = {r["paper_id"] for r in records}
    assert {"2004.04906", "2407.10671", "0908.0054"} <= papers
    assert all(r["text"].strip() for r in records)
    assert sum(r["repaired"] for r in records) >= 1


def test_only_the_latest_version_of_a_paper_is_kept_and_reruns_reuse_shards(tmp_path):
    demo = write_demo_pdfs(tmp_path / "demo", n=4)
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for path in demo:
        shutil.copy(path, pdfs / path.name)
        shutil.copy(path, pdfs / path.name.replace("v1", "v2"))
    cfg = ArxivImageConfig(pdfs=str(pdfs), raster=FAST, shards=3,
                           splits=SplitConfig(val_fraction=0.3, test_fraction=0.3, test_max_images=None))
    manifest = rasterize_pdfs(cfg, tmp_path / "a", tmp_path / "work")
    assert manifest["stats"]["superseded_version"] == 4 and manifest["stats"]["file_ok"] == 4
    by_paper: dict[str, set[str]] = {}
    ids = []
    for split in shards.SPLITS:
        for record in shards.iter_records(tmp_path / "a", split, columns=["id", "paper_id", "split"]):
            by_paper.setdefault(record["paper_id"], set()).add(record["split"])
            ids.append(record["id"])
    assert len(by_paper) == 4 and len(ids) == len(set(ids))
    assert all(len(splits) == 1 for splits in by_paper.values())
    # A rerun with the same work area reuses the raw shards; the published bytes are identical.
    raw = sorted((tmp_path / "work" / "raw").glob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in raw]
    rasterize_pdfs(cfg, tmp_path / "b", tmp_path / "work")
    assert [p.stat().st_mtime_ns for p in raw] == stamps
    # A fresh work area gives the same bytes too (determinism).
    rasterize_pdfs(cfg, tmp_path / "c", tmp_path / "work2")
    for shard in (tmp_path / "a").rglob("*.parquet"):
        rel = shard.relative_to(tmp_path / "a")
        assert shard.read_bytes() == (tmp_path / "c" / rel).read_bytes()


def test_labelled_set_round_trips_with_labels(tmp_path):
    root = write_digits_image_folder(tmp_path / "digits", per_class=6, upscale_to=16)
    (root / "3" / "broken.png").write_bytes(b"not a png")
    cfg = ClassesConfig(root=str(root), image=LabelledConfig(size=16, grayscale=True), shards=2,
                        splits=SplitConfig(val_fraction=0.2, test_fraction=0.2, test_max_images=None))
    manifest = prepare_images(cfg, tmp_path / "out", tmp_path / "work")
    assert manifest["classes"] == [str(d) for d in range(10)]
    assert manifest["stats"]["skipped_image:unreadable"] == 1
    records = [r for split in shards.SPLITS for r in shards.iter_records(tmp_path / "out", split)]
    assert len(records) == 60
    for record in records:
        assert record["label"] == int(record["id"].split("/")[0]) == int(record["title"])
        assert shards.decode_png(record["png"]).size == (16, 16)
    assert {r["split"] for r in records} == {"train", "val", "test"}
    again = prepare_images(cfg, tmp_path / "out2", tmp_path / "work2")
    assert again["images"] == manifest["images"]
    for shard in (tmp_path / "out").rglob("*.parquet"):
        assert shard.read_bytes() == (tmp_path / "out2" / shard.relative_to(tmp_path / "out")).read_bytes()


def test_a_separate_test_folder_is_the_whole_test_split(tmp_path):
    """data.classes.test_root (the paper's Table 1a: ImageNet val): its images, labelled by the training tree's
    class folders, make the test split (capped by test_max_images, the rest written nowhere), and no training
    image is in test."""
    root = write_digits_image_folder(tmp_path / "train", per_class=4, upscale_to=16)
    test_root = write_digits_image_folder(tmp_path / "val", per_class=2, upscale_to=16)
    shutil.rmtree(test_root / "7")  # a class may have no test images
    cfg = ClassesConfig(root=str(root), test_root=str(test_root), image=LabelledConfig(size=16, grayscale=True), shards=2,
                        splits=SplitConfig(val_fraction=0.25, test_fraction=0.5, test_max_images=15))
    manifest = prepare_images(cfg, tmp_path / "out", tmp_path / "work")
    test = list(shards.iter_records(tmp_path / "out", "test"))
    assert len(test) == 15 and manifest["images"]["test"] == 15
    assert manifest["stats"]["skipped_image:test_root_beyond_test_max_images"] == 18 - 15
    assert all("/@test_root/" in r["id"] and r["label"] == int(r["title"]) == int(r["id"].split("/")[0]) for r in test)
    rest = [r for split in ("train", "val") for r in shards.iter_records(tmp_path / "out", split)]
    assert len(rest) == 40 and not any("@test_root" in r["id"] for r in rest)
    (test_root / "not_a_class").mkdir()
    (test_root / "not_a_class" / "x.png").write_bytes((test_root / "0").iterdir().__next__().read_bytes())
    with pytest.raises(ValueError, match="not_a_class.*training set's class folders"):
        prepare_images(cfg, tmp_path / "out2", tmp_path / "work2")
