"""rasterize_pdfs meeting real-world faults, each with its own fixture: image-only files, copies of one
paper, an unreadable newer version, a file that hangs the reader, a shard killed half-way. Each test
checks the counts, what is kept, the log lines, and that nothing else is lost."""

import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pymupdf
from PIL import Image

from dnd.data import shards
from dnd.data.pdf import RasterConfig
from dnd.data.pdf_watchdog import HANG_ENV
from dnd.data.splits import SplitConfig
from dnd.stages.arxiv_image import ArxivImageConfig, RasterShardTask, rasterize_pdfs, rasterize_shard

FAST = RasterConfig(dpi=36, size=128, max_pages_per_paper=2)
ALL_TRAIN = SplitConfig(val_fraction=0.0, test_fraction=0.0, test_max_images=None)


def write_paper(path: Path, words: str, stamp: str | None = None, pages: int = 1) -> Path:
    """A small text PDF: `words` on every page, an arXiv stamp on the first when given."""
    doc = pymupdf.open()
    for number in range(pages):
        page = doc.new_page(width=300, height=300)
        page.insert_text((20, 40), f"{words} page {number}", fontsize=14)
        if stamp and number == 0:
            page.insert_text((20, 280), stamp, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    return path


def records_of(out: Path) -> list[dict]:
    return [r for split in shards.SPLITS for r in shards.iter_records(out, split, columns=["id", "paper_id", "text", "source"])]


def run(pdfs: Path, tmp_path: Path, caplog, name: str = "out", shards: int = 1, **cfg) -> dict:
    # One shard runs in this process with one reader child: the cheapest set-up (a child is a Python start).
    config = ArxivImageConfig(pdfs=str(pdfs), raster=FAST, shards=shards, splits=ALL_TRAIN, **cfg)
    with caplog.at_level(logging.INFO):
        return rasterize_pdfs(config, tmp_path / name, tmp_path / "work")


def warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_image_only_files_are_counted_and_named(tmp_path, caplog):
    pdfs = tmp_path / "pdfs"
    write_paper(pdfs / "2101.00001v1.pdf", "Readable words", pages=2)
    Image.new("RGB", (200, 300), "white").save(tmp_path / "scan.png")
    shutil.copy(tmp_path / "scan.png", pdfs / "2101.00002v1.pdf")  # a PNG named .pdf: MuPDF opens it as an image
    scan = pymupdf.open()  # a scanned paper: a page that is only a picture
    scan.new_page(width=300, height=300).insert_image(pymupdf.Rect(0, 0, 300, 300), filename=str(tmp_path / "scan.png"))
    scan.save(pdfs / "2101.00003v1.pdf")
    mixed = pymupdf.open(write_paper(tmp_path / "mixed.pdf", "Text on the first page"))  # page 1 has no text
    mixed.new_page(width=300, height=300).insert_image(pymupdf.Rect(0, 0, 300, 300), filename=str(tmp_path / "scan.png"))
    mixed.save(pdfs / "2101.00004v1.pdf")

    manifest = run(pdfs, tmp_path, caplog)
    stats = manifest["stats"]
    assert stats["file_ok"] == 2 and stats["skipped_file:no_image"] == 2
    assert stats["no_text_layer_page"] == 3 and stats["pages"] == 6
    events = {(Path(e["file"]).name, e["event"]): e["count"] for e in manifest["skipped_or_repaired"]}
    assert events == {
        ("2101.00002v1.pdf", "no_text_layer_page"): 1, ("2101.00002v1.pdf", "skipped_file:no_image"): 1,
        ("2101.00003v1.pdf", "no_text_layer_page"): 1, ("2101.00003v1.pdf", "skipped_file:no_image"): 1,
        ("2101.00004v1.pdf", "no_text_layer_page"): 1,
    }
    text = warnings(caplog)
    assert "2101.00002v1.pdf: 1 of 1 page(s) have no text layer (MuPDF read it as an image, not a PDF)" in text
    assert "2101.00003v1.pdf: skipped file (no_image)" in text and "2101.00004v1.pdf: 1 of 2 page(s)" in text
    records = records_of(tmp_path / "out")
    assert sorted(r["id"] for r in records) == ["2101.00001/p0000/c0", "2101.00001/p0001/c0", "2101.00004/p0000/c0"]
    assert {r["source"] for r in records} == {"2101.00001v1.pdf", "2101.00004v1.pdf"}


def test_copies_of_one_paper_give_unique_ids_and_are_named(tmp_path, caplog):
    pdfs = tmp_path / "pdfs"
    write_paper(pdfs / "2102.00001v2.pdf", "Second version")
    write_paper(pdfs / "mirror" / "2102.00001v2.pdf", "Second version copy")  # a copy under the same name
    # No id in the names: the id is read from the first page's stamp, after rendering.
    write_paper(pdfs / "paper.pdf", "Stamped copy", stamp="arXiv:2102.00001v2 [cs.CV] 1 Feb 2021")
    write_paper(pdfs / "other.pdf", "Another paper", stamp="arXiv:2102.00002v1 [cs.CV] 1 Feb 2021")
    manifest = run(pdfs, tmp_path, caplog)
    records = records_of(tmp_path / "out")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 2  # one crop of each of the two papers
    assert {r["paper_id"]: r["source"] for r in records} == {"2102.00001": "mirror/2102.00001v2.pdf", "2102.00002": "other.pdf"}
    assert manifest["superseded"] == [{"file": str(pdfs / "2102.00001v2.pdf"), "paper_id": "2102.00001", "by": str(pdfs / "mirror" / "2102.00001v2.pdf")}]
    assert manifest["duplicates"] == [{"file": str(pdfs / "paper.pdf"), "paper_id": "2102.00001", "kept": str(pdfs / "mirror" / "2102.00001v2.pdf")}]
    assert manifest["stats"]["duplicate_file"] == 1 and manifest["stats"]["superseded_version"] == 1
    assert manifest["stats"]["file_ok"] == 2 and manifest["stats"]["images"] == 2 == sum(manifest["images"].values())
    assert f"{pdfs / 'paper.pdf'}: duplicate of {pdfs / 'mirror' / '2102.00001v2.pdf'}" in warnings(caplog)


def test_an_unreadable_newer_version_falls_back_to_the_older_one(tmp_path, caplog):
    pdfs = tmp_path / "pdfs"
    write_paper(pdfs / "2103.00001v1.pdf", "The readable first version", pages=2)
    (pdfs / "2103.00001v2.pdf").write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 50)  # a cut download
    (pdfs / "2103.00001v3.pdf").write_bytes(b"")
    write_paper(pdfs / "2103.00002v1.pdf", "Untouched neighbour")
    manifest = run(pdfs, tmp_path, caplog)
    stats = manifest["stats"]
    assert stats["file_ok"] == 2 and stats["skipped_file:empty"] == 1 and stats["skipped_file:unrepairable"] == 1
    assert "superseded_version" not in stats  # the older version was needed: nothing superseded
    records = records_of(tmp_path / "out")
    assert sorted((r["source"], r["id"]) for r in records) == [
        ("2103.00001v1.pdf", "2103.00001/p0000/c0"), ("2103.00001v1.pdf", "2103.00001/p0001/c0"),
        ("2103.00002v1.pdf", "2103.00002/p0000/c0"),
    ]
    assert "The readable first version page 1" in {r["text"] for r in records}
    text = warnings(caplog)
    assert f"{pdfs / '2103.00001v3.pdf'}: gave no image; falling back to the older version {pdfs / '2103.00001v2.pdf'}" in text
    assert f"{pdfs / '2103.00001v2.pdf'}: gave no image; falling back to the older version {pdfs / '2103.00001v1.pdf'}" in text


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_hanging_file_is_killed_counted_and_not_read_again(tmp_path, caplog, monkeypatch):
    pdfs = tmp_path / "pdfs"
    for number in range(1, 5):
        write_paper(pdfs / f"2104.0000{number}v1.pdf", f"Paper {number}")
    monkeypatch.setenv(HANG_ENV, "2104.00002v1.pdf")  # the reader hangs there, deaf to SIGTERM and SIGINT
    monkeypatch.setenv("DND_WORKERS", "2")  # shards in a local process pool: their lines must still reach this log
    started = time.monotonic()
    manifest = run(pdfs, tmp_path, caplog, shards=2, file_timeout_s=3)
    assert time.monotonic() - started < 60
    stats = manifest["stats"]
    assert stats["skipped_file:timeout"] == 1 and stats["file_ok"] == 3
    assert manifest["skipped_or_repaired"] == [{"file": str(pdfs / "2104.00002v1.pdf"), "event": "skipped_file:timeout", "count": 1}]
    assert sorted(r["paper_id"] for r in records_of(tmp_path / "out")) == ["2104.00001", "2104.00003", "2104.00004"]
    (line,) = [r.getMessage() for r in caplog.records if "skipped file (timeout)" in r.getMessage() and "[shard" in r.getMessage()]
    assert line.endswith("no result within 3 s; killed reader process %s, a new one reads on" % line.split("process ")[1].split(",")[0])
    assert not pid_alive(int(line.split("process ")[1].split(",")[0]))  # the hung reader is gone

    # A rerun of the shard (a requeue that finds its journal) does not read the hanging file again.
    raw = next(p for p in (tmp_path / "work" / "raw").glob("raw-*.parquet") if "2104.00002" in p.with_suffix(".files.jsonl").read_text())
    raw.with_suffix(".json").unlink()
    raw.unlink()
    task = _task_of(raw, pdfs, tmp_path, timeout=3)
    summary = rasterize_shard(task)
    assert summary["stats"]["skipped_file:timeout"] == 1
    journal = [json.loads(line)["file"] for line in raw.with_suffix(".files.jsonl").read_text().splitlines()]
    assert journal.count(str(pdfs / "2104.00002v1.pdf")) == 1  # never handed to a reader again
    lines = raw.with_suffix(".log.jsonl").read_text()
    assert "in an earlier run; not read again" in lines and "resuming after" in lines


def _task_of(raw: Path, pdfs: Path, tmp_path: Path, timeout: float) -> RasterShardTask:
    index, count = (int(part) for part in raw.stem.removeprefix("raw-").split("-of-"))
    journal = [json.loads(line)["file"] for line in raw.with_suffix(".files.jsonl").read_text().splitlines()]
    return RasterShardTask(tuple((f,) for f in dict.fromkeys(journal)), index, count, FAST, raw.parent, str(pdfs), timeout)


def _run_shard(task: RasterShardTask) -> None:
    rasterize_shard(task)


def test_a_killed_shard_resumes_after_its_last_finished_file(tmp_path, monkeypatch):
    pdfs = tmp_path / "pdfs"
    files = [str(write_paper(pdfs / f"2105.0000{n}v1.pdf", f"Paper {n}", pages=2)) for n in range(1, 5)]
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    task = RasterShardTask(tuple((f,) for f in files), 0, 1, FAST, raw_dir, str(pdfs), 600)
    raw = shards.raw_shard_path(raw_dir, 0, 1)
    journal = raw.with_suffix(".files.jsonl")
    monkeypatch.setenv(HANG_ENV, "2105.00003v1.pdf")  # the shard stalls on its third file, and is killed there
    process = multiprocessing.get_context("spawn").Process(target=_run_shard, args=(task,))
    process.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (journal.exists() and len(journal.read_text().splitlines()) == 2):
        time.sleep(0.1)
    process.kill()
    process.join()
    assert len(journal.read_text().splitlines()) == 2 and not raw.exists()
    parts = sorted(raw.with_suffix(".parts").glob("*.parquet"))
    assert len(parts) == 2  # the two finished files' crops, on disk, not in the killed process's memory

    monkeypatch.delenv(HANG_ENV)
    summary = rasterize_shard(task)
    read = [json.loads(line)["file"] for line in journal.read_text().splitlines()]
    assert read == files  # the two finished files were not read again, the other two once each
    assert not raw.with_suffix(".parts").exists()  # merged into the raw shard
    assert summary["stats"]["file_ok"] == 4 and summary["stats"]["images"] == 8
    table = shards.pq.read_table(raw)
    assert sorted(table["id"].to_pylist()) == [f"2105.0000{n}/p000{p}/c0" for n in range(1, 5) for p in range(2)]
    assert "resuming after 2 file(s) finished by an earlier run" in raw.with_suffix(".log.jsonl").read_text()


def test_the_standalone_command_logs_every_count_to_its_own_log(tmp_path):
    import subprocess
    import sys

    pdfs = tmp_path / "pdfs"
    write_paper(pdfs / "2106.00001v1.pdf", "Readable")
    shutil.copy(write_paper(tmp_path / "x.pdf", "x"), pdfs / "2106.00002v1.pdf")
    (pdfs / "2106.00003v1.pdf").write_bytes(b"not a pdf at all")
    params = {"pdfs": str(pdfs), "shards": 1, "raster": {"dpi": 36, "size": 128}, "splits": {"val_fraction": 0.0, "test_fraction": 0.0, "test_max_images": None}}
    log_file = tmp_path / "stage.log"
    env = {**os.environ, "DND_WORKERS": "1"}
    subprocess.run([sys.executable, "-m", "dnd", "rasterize-pdfs", "--params", json.dumps(params), "--out", str(tmp_path / "out"),
                    "--work-dir", str(tmp_path / "work"), "--log", str(log_file)], check=True, env=env, capture_output=True, cwd=tmp_path)
    text = log_file.read_text()
    assert "WARNING" in text and "2106.00003v1.pdf: skipped file (not_a_pdf)" in text
    assert "skipped_file:not_a_pdf ×1" in text and "'file_ok': 2" in text


def test_a_reader_that_dies_is_counted_and_replaced(tmp_path, monkeypatch):
    """MuPDF can also abort the whole process (a segfault in C): the file is named, a new reader reads on."""
    import signal
    import threading

    from dnd.data.pdf_watchdog import WatchedReader
    from dnd.stages.arxiv_image import EXTRA_FIELDS

    pdfs = tmp_path / "pdfs"
    dying, good = write_paper(pdfs / "dies.pdf", "Never read"), write_paper(pdfs / "good.pdf", "Read after it")
    monkeypatch.setenv(HANG_ENV, "dies.pdf")
    with WatchedReader(FAST, shards.image_schema(EXTRA_FIELDS), str(pdfs), 60, logging.getLogger("test")) as reader:
        assert reader.read(str(good), str(tmp_path / "part-0.parquet"))["images"] == 1  # the reader is up
        threading.Timer(1.0, lambda: os.kill(reader.process.pid, signal.SIGKILL)).start()
        started = time.monotonic()
        died = reader.read(str(dying), str(tmp_path / "part-1.parquet"))
        assert time.monotonic() - started < 30  # noticed at once, not after the time limit
        assert died["stats"] == {"skipped_file:reader_crashed": 1} and died["images"] == 0
        assert "dies.pdf: skipped file (reader_crashed): the reader process" in died["log"][0][1]
        read = reader.read(str(good), str(tmp_path / "part-2.parquet"))
    assert read["stats"]["file_ok"] == 1 and read["images"] == 1
    assert shards.pq.read_table(tmp_path / "part-2.parquet")["text"].to_pylist() == ["Read after it page 0"]
    assert len(reader.killed_pids) == 1 and not pid_alive(reader.killed_pids[0])
