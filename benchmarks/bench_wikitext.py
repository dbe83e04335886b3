"""Wikitext → prose on one core: dnd's cleaner vs wikiextractor 3.1 vs a naive mwparserfromhell loop.

    python benchmarks/bench_wikitext.py [DUMP] [--repeats N]

DUMP defaults to the 206-page enwiki excerpt in ../shared/data/wiki/. Every method cleans the same
articles, read once by `dnd.data.wiki.iter_pages` (timed separately and added to each total), so the
comparison is of cleaners alone:
  (a) dnd      `clean_wikitext` (regex/scanner pre-pass, then mwparserfromhell on what is left);
  (b) wikiext. `wikiextractor.extract.Extractor.clean_text` per page, in this process (its CLI with
               `--processes 1` would add a worker process and a template-collection pass over the
               dump; plain-text output, `html_safe=False`, so it is not penalised for escaping `&`);
  (c) naive    `mwparserfromhell.parse(text).strip_code()`.
All three run single-threaded in this process (one core); times are the best of `--repeats` runs, so
other load on the machine inflates them less. Markup leftovers are counted in each output.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import mwparserfromhell  # noqa: E402
from wikiextractor.extract import Extractor  # noqa: E402

from dnd.data.wiki import WikiPage, clean_wikitext, iter_pages  # noqa: E402

DEFAULT_DUMP = (
    REPO_ROOT.parent
    / "shared"
    / "data"
    / "wiki"
    / "gensim__enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
LEFTOVERS = {
    "{{": re.compile(r"\{\{"),
    "}}": re.compile(r"\}\}"),
    "[[": re.compile(r"\[\["),
    "]]": re.compile(r"\]\]"),
    "|": re.compile(r"\|"),
    "<ref": re.compile(r"<ref", re.IGNORECASE),
    "&ent;": re.compile(r"&#?\w+;"),
}


def wikiextractor_clean(page: WikiPage) -> str:
    extractor = Extractor(page.page_id, 0, "", page.title, [page.wikitext])
    return " ".join(extractor.clean_text(page.wikitext, html_safe=False))


def naive_clean(page: WikiPage) -> str:
    return mwparserfromhell.parse(page.wikitext).strip_code()


METHODS: dict[str, Callable[[WikiPage], str]] = {
    "dnd clean_wikitext": lambda page: clean_wikitext(page.wikitext),
    "wikiextractor 3.1": wikiextractor_clean,
    "naive strip_code": naive_clean,
}


def best_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", nargs="?", type=Path, default=DEFAULT_DUMP, help="MediaWiki XML export (.xml or .bz2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the best time is reported")
    args = parser.parse_args()
    if not args.dump.exists():
        sys.exit(f"dump not found: {args.dump}\npass a MediaWiki XML export (.xml or .xml.bz2) as the first argument")
    logging.getLogger("wikiextractor").setLevel(logging.ERROR)  # template warnings are noise here

    read_s, pages = best_time(lambda: list(iter_pages(args.dump)), args.repeats)
    print(f"{args.dump.name}: {len(pages)} articles; reading {read_s:.3f} s")
    print(f"best of {args.repeats} runs, single-threaded\n")
    rows = []
    for name, clean in METHODS.items():
        clean_s, texts = best_time(lambda clean=clean: [clean(page) for page in pages], args.repeats)
        joined = "\n".join(texts)
        counts = {key: len(pattern.findall(joined)) for key, pattern in LEFTOVERS.items()}
        rows.append((name, clean_s, read_s + clean_s, len(joined.split()), counts))

    ours_total, ours_leftovers = rows[0][2], sum(rows[0][4].values())
    header = f"{'method':<20}{'clean s':>9}{'read+clean s':>14}{'× dnd':>7}{'words':>9}"
    header += "".join(f"{key:>7}" for key in LEFTOVERS) + f"{'total':>8}{'× dnd':>8}"
    print(header)
    print("-" * len(header))
    for name, clean_s, total_s, words, counts in rows:
        leftovers = sum(counts.values())
        leftover_ratio = f"{leftovers / ours_leftovers:.0f}" if ours_leftovers else ("1" if not leftovers else "∞")
        line = f"{name:<20}{clean_s:>9.3f}{total_s:>14.3f}{total_s / ours_total:>7.2f}{words:>9}"
        line += "".join(f"{counts[key]:>7}" for key in LEFTOVERS) + f"{leftovers:>8}{leftover_ratio:>8}"
        print(line)
    print("\n'|' also counts pipes that belong to the articles' own text.")


if __name__ == "__main__":
    main()
