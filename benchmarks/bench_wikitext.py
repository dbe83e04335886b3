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
All three run single-threaded in this process (one core), interleaved round by round (benchmarks/timing.py),
each time and each ratio against ours printed as median [min, max]. Markup leftovers are counted in each output.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import mwparserfromhell  # noqa: E402
from wikiextractor.extract import Extractor  # noqa: E402

from benchmarks.timing import MIN_ROUNDS, Spread, ratio_spread, time_interleaved  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", nargs="?", type=Path, default=DEFAULT_DUMP, help="MediaWiki XML export (.xml or .bz2)")
    parser.add_argument("--repeats", type=int, default=MIN_ROUNDS, help="interleaved timed rounds of the methods")
    args = parser.parse_args()
    if not args.dump.exists():
        sys.exit(f"dump not found: {args.dump}\npass a MediaWiki XML export (.xml or .xml.bz2) as the first argument")
    logging.getLogger("wikiextractor").setLevel(logging.ERROR)  # template warnings are noise here

    pages = list(iter_pages(args.dump))
    texts: dict[str, list[str]] = {}

    def cleaning(name: str, clean: Callable[[WikiPage], str]) -> Callable[[], None]:
        return lambda: texts.__setitem__(name, [clean(page) for page in pages])

    times = time_interleaved({"read": lambda: list(iter_pages(args.dump)),
                              **{name: cleaning(name, clean) for name, clean in METHODS.items()}}, args.repeats)
    ours = next(iter(METHODS))
    print(f"{args.dump.name}: {len(pages)} articles; reading {Spread.of(times['read'])} s")
    print(f"{args.repeats} interleaved rounds, single-threaded; times and ratios are median [min, max]\n")
    ours_leftovers = None
    header = f"{'method':<20}{'clean s':>24}{'clean × dnd':>24}{'words':>9}"
    header += "".join(f"{key:>7}" for key in LEFTOVERS) + f"{'total':>8}{'× dnd':>8}"
    print(header)
    print("-" * len(header))
    for name in METHODS:
        joined = "\n".join(texts[name])
        counts = {key: len(pattern.findall(joined)) for key, pattern in LEFTOVERS.items()}
        leftovers = sum(counts.values())
        ours_leftovers = leftovers if ours_leftovers is None else ours_leftovers
        leftover_ratio = f"{leftovers / ours_leftovers:.0f}" if ours_leftovers else ("1" if not leftovers else "∞")
        line = (f"{name:<20}{str(Spread.of(times[name])):>24}{str(ratio_spread(times[name], times[ours])):>24}"
                f"{len(joined.split()):>9}")
        line += "".join(f"{counts[key]:>7}" for key in LEFTOVERS) + f"{leftovers:>8}{leftover_ratio:>8}"
        print(line)
    print("\n'|' also counts pipes that belong to the articles' own text.")


if __name__ == "__main__":
    main()
