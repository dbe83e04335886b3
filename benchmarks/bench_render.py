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
import time
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dnd.data.render import PageLayout, RenderConfig  # noqa: E402
from dnd.stages.text_image import TextImageConfig, WikiTextConfig, extract_wiki_text, render_text_images  # noqa: E402


def bare_loop(pages: list[list[str]], layout: PageLayout) -> float:
    cfg, font, height = layout.cfg, layout.font, layout.line_height
    start = time.perf_counter()
    for lines in pages:
        image = Image.new(cfg.mode, (cfg.size, cfg.size), "white")
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(lines):
            draw.text((cfg.margin, cfg.margin + row * height), line, fill="black", font=font)
        image.save(io.BytesIO(), format="PNG", optimize=False, compress_level=6)
    return time.perf_counter() - start


def main() -> None:
    default = REPO.parent / "shared" / "data" / "wiki" / "gensim__enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    if not default.exists():
        default = REPO / "demo" / "wiki" / "demo-pages-articles.xml"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", nargs="?", default=str(default))
    parser.add_argument("--max-articles", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
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

        bare, pipeline = [], []
        for repeat in range(args.repeats):
            bare.append(bare_loop(pages, layout))
            start = time.perf_counter()
            render_text_images(TextImageConfig(shards=1), chunks, tmp / f"out{repeat}", tmp / f"work{repeat}")
            pipeline.append(time.perf_counter() - start)

    n = len(pages)
    bare_rate, pipe_rate = n / min(bare), n / min(pipeline)
    print(f"dump: {args.dump}  ({len(texts)} chunks, {n} pages, best of {args.repeats}, 1 process)")
    print(f"{'bare Pillow loop':<22}{bare_rate:10.1f} pages/s")
    print(f"{'pipeline stage':<22}{pipe_rate:10.1f} pages/s")
    print(f"ratio pipeline/bare: {pipe_rate / bare_rate:.3f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
