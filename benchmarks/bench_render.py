"""Text-Image rendering throughput: the pipeline stage vs a bare Pillow loop on the same pages.

    python benchmarks/bench_render.py [DUMP] [--max-articles N]

The bare loop only does what Pillow must do for each page (new canvas, draw the lines, PNG encode)
with the lines precomputed; the pipeline does everything the stage does (layout pass, split
assignment, layout + draw + encode, Parquet shards, publish). One worker process for both.
Target: pipeline ≥ 0.8× the bare loop's pages/s.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.timing import MIN_ROUNDS, Spread, ratio_spread, time_interleaved  # noqa: E402
from dnd.data.render import PageLayout, RenderConfig  # noqa: E402
from dnd.stages.text_image import TextImageConfig, WikiTextConfig, extract_wiki_text, render_text_images  # noqa: E402


def bare_loop(pages: list[list[str]], layout: PageLayout) -> None:
    cfg, font, height = layout.cfg, layout.font, layout.line_height
    for lines in pages:
        image = Image.new(cfg.mode, (cfg.size, cfg.size), "white")
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(lines):
            draw.text((cfg.margin, cfg.margin + row * height), line, fill="black", font=font)
        image.save(io.BytesIO(), format="PNG", optimize=False, compress_level=6)


def main() -> None:
    default = REPO.parent / "shared" / "data" / "wiki" / "gensim__enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    if not default.exists():
        default = REPO / "demo" / "wiki" / "demo-pages-articles.xml"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", nargs="?", default=str(default))
    parser.add_argument("--max-articles", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=MIN_ROUNDS, help="interleaved timed rounds")
    args = parser.parse_args()
    os.environ["DND_WORKERS"] = "1"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chunks = tmp / "chunks.parquet"
        extract_wiki_text(WikiTextConfig(dump=args.dump, max_articles=args.max_articles), chunks)
        import pyarrow.parquet as pq

        texts = pq.read_table(chunks, columns=["text"])["text"].to_pylist()
        layout = PageLayout(RenderConfig())
        pages = [page for text in texts for page in layout.pages(text)]

        runs = iter(range(10**6))  # each stage run writes a fresh output folder

        def stage() -> None:
            run = next(runs)
            render_text_images(TextImageConfig(shards=1), chunks, tmp / f"out{run}", tmp / f"work{run}")

        times = time_interleaved({"bare": lambda: bare_loop(pages, layout), "stage": stage}, args.repeats)

    n = len(pages)
    print(f"dump: {args.dump}  ({len(texts)} chunks, {n} pages, {args.repeats} interleaved rounds, 1 process; "
          "median [min, max])")
    print(f"{'bare Pillow loop':<22}{Spread.of([n / t for t in times['bare']])} pages/s")
    print(f"{'pipeline stage':<22}{Spread.of([n / t for t in times['stage']])} pages/s")
    print(f"ratio pipeline/bare: {ratio_spread(times['bare'], times['stage'])}  (target >= 0.8)")


if __name__ == "__main__":
    main()
