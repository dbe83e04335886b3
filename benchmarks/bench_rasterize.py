"""rasterize_pdf against the bare minimum PyMuPDF work on the same pages (target ratio ≥ 0.8).

The bare loop opens each file, renders each page at the same dpi, resizes and cuts the same crops and
PNG-encodes them: no text layer, no fault handling, no records. Blank crops are kept on both sides
(`min_text_chars=0`) so both encode the same images. Pages: the real papers in ../shared/data/arxiv
beside the repository when present, else demo PDFs written to a temporary folder.

A third loop runs the stage's shard function on the same files: one watched reader process (started
once per shard, the per-file time limit enforced from outside it), a Parquet part per finished file,
the journal, and the raw shard streamed from the parts. Its ratio includes that process's start-up,
which a real shard of hundreds of pages spreads thin; a few pages show it in full.

    python benchmarks/bench_rasterize.py [--pages-per-paper 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import pymupdf
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import MIN_ROUNDS, Spread, ratio_spread, time_interleaved  # noqa: E402

from dnd.data.demo_pdfs import write_demo_pdfs  # noqa: E402
from dnd.data.pdf import RasterConfig, rasterize_pdf  # noqa: E402
from dnd.data.shards import encode_png  # noqa: E402
from dnd.stages.arxiv_image import RasterShardTask, rasterize_shard  # noqa: E402

REAL_PAPERS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arxiv"


def bare_loop(paths: list[Path], cfg: RasterConfig) -> int:
    pages = 0
    for path in paths:
        with pymupdf.open(path) as doc:
            for index in range(min(doc.page_count, cfg.max_pages_per_paper)):
                page = doc.load_page(index)
                pixmap = page.get_pixmap(dpi=cfg.dpi, colorspace=pymupdf.csRGB, alpha=False)
                image = Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples_mv)
                height = round(page.rect.height * cfg.size / page.rect.width)
                canvas = image.resize((cfg.size, height), Image.Resampling.LANCZOS)
                for top in range(0, height, cfg.size):
                    encode_png(canvas.crop((0, top, cfg.size, top + cfg.size)))
                pages += 1
    return pages


def ours(paths: list[Path], cfg: RasterConfig) -> int:
    stats: Counter = Counter()
    log = logging.getLogger("bench")
    for path in paths:
        for _ in rasterize_pdf(path, cfg, stats, log):
            pass
    return stats["pages"]


def watched_shard(paths: list[Path], cfg: RasterConfig) -> int:
    with tempfile.TemporaryDirectory() as raw_dir:
        task = RasterShardTask(tuple((str(p),) for p in paths), 0, 1, cfg, Path(raw_dir), str(paths[0].parent), 600.0)
        return rasterize_shard(task)["stats"]["pages"]


Loop = Callable[[list[Path], RasterConfig], int]  # returns the number of pages it rendered


def rate_spreads(loops: dict[str, Loop], paths: list[Path], cfg: RasterConfig, rounds: int) -> dict[str, Spread]:
    """Pages/s of each loop, and each loop's speed against the bare loop per round (median [min, max])."""
    pages: dict[str, int] = {}

    def call(name: str, run: Loop) -> Callable[[], None]:
        return lambda: pages.__setitem__(name, run(paths, cfg))

    times = time_interleaved({name: call(name, run) for name, run in loops.items()}, rounds)
    rates = {name: Spread.of([pages[name] / t for t in values]) for name, values in times.items()}
    ratios = {f"{name}/bare": ratio_spread(times["bare"], times[name]) for name in loops if name != "bare"}
    return rates | ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages-per-paper", type=int, default=3, help="first pages of each paper to render")
    parser.add_argument("--repeats", type=int, default=MIN_ROUNDS, help="interleaved timed rounds of the loops")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # per-file MuPDF notes are not what is measured here
    cfg = RasterConfig(max_pages_per_paper=args.pages_per_paper, min_text_chars=0)
    with tempfile.TemporaryDirectory() as tmp:
        if REAL_PAPERS.is_dir():
            paths, source = sorted(REAL_PAPERS.glob("*.pdf")), "real arXiv papers"
        else:
            paths, source = write_demo_pdfs(Path(tmp)), "demo PDFs"
        spreads = rate_spreads({"bare": bare_loop, "ours": ours, "shard": watched_shard}, paths, cfg, args.repeats)
    print(f"{len(paths)} {source}, ≤{args.pages_per_paper} pages each, dpi {cfg.dpi}, {cfg.size}px {cfg.crop}; "
          f"{args.repeats} interleaved rounds, median [min, max]")
    print(f"bare PyMuPDF loop: {spreads['bare']} pages/s")
    print(f"rasterize_pdf:     {spreads['ours']} pages/s")
    print(f"ratio:             {spreads['ours/bare']} (target ≥ 0.8)")
    print(f"rasterize_shard:   {spreads['shard']} pages/s (watched reader process, parts, journal)")
    print(f"ratio:             {spreads['shard/bare']}")


if __name__ == "__main__":
    main()
