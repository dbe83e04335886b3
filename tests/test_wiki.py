"""Dump streaming, wikitext cleaning and chunking (dnd/data/wiki.py)."""

from __future__ import annotations

import bz2
import collections
import os
import re
import threading
import tracemalloc
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from dnd.data.wiki import (
    CleaningRules,
    DumpFault,
    DumpReport,
    chunk_words,
    clean_wikitext,
    iter_pages,
    iter_pages_in_range,
    read_multistream_index,
)
from testdata import DEMO_DUMP, shared_data

# file name → (export schema, <page> elements in the file)
REAL_DUMPS = {
    "mwxml__dump.xml": ("0.8", 2),
    "wikipedia2vec__enwiki-pages-articles-sample.xml.bz2": ("0.9", 3),
    "gensim__enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2": ("0.10", 206),
}
LEFTOVERS = {
    "{{": r"\{\{",
    "}}": r"\}\}",
    "[[": r"\[\[",
    "]]": r"\]\]",
    "<ref": r"<ref",
    "entity": r"&#?\w+;",
    "'''": r"'''",
    "''": r"''",
    "|": r"\|",
}


def leftover_counts(text: str) -> dict[str, int]:
    return {name: len(re.findall(pattern, text)) for name, pattern in LEFTOVERS.items()}


def real_dump(name: str) -> Path:
    return shared_data("wiki", name)


def export(pages: list[str], schema: str = "0.11") -> str:
    return (
        f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-{schema}/" version="{schema}" xml:lang="en">\n'
        "  <siteinfo><sitename>Test</sitename></siteinfo>\n" + "".join(pages) + "</mediawiki>\n"
    )


def page_xml(page_id: int, title: str, text: str, ns: int = 0, revisions: int = 1) -> str:
    body = "".join(
        f'    <revision><id>{page_id * 100 + r}</id><text xml:space="preserve">{escape(text)}</text></revision>\n'
        for r in range(revisions)
    )
    return f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n{body}  </page>\n"


# ----------------------------------------------------------------------------------------------------
# Reading


def test_demo_dump_counts_and_clean_prose():
    stats = collections.Counter()
    pages = list(iter_pages(DEMO_DUMP, stats))
    assert stats == {"article": 36, "redirect": 2, "disambiguation": 1, "non_article_namespace": 1}
    assert all(page.namespace == 0 for page in pages)
    assert len({page.page_id for page in pages}) == 36
    texts = {page.title: clean_wikitext(page.wikitext) for page in pages}
    assert sum(leftover_counts("\n".join(texts.values())).values()) == 0
    words = sorted(len(text.split()) for text in texts.values())
    assert words[0] >= 250 and words[-1] <= 450
    assert sum(count >= 400 for count in words) >= 5  # these overflow a 512×512 page
    assert texts["Tea"].startswith("Tea is a drink made by pouring hot")  # newest of two revisions
    assert "arts & crafts" in texts["Library"]  # &amp;amp; in the XML, &amp; in the wikitext
    assert "Suspension bridge" not in texts["Arch bridge"]  # the See also section is gone


@pytest.mark.parametrize("name", REAL_DUMPS)
def test_real_dumps_parse_and_clean_without_markup(name):
    schema, n_pages = REAL_DUMPS[name]
    path = real_dump(name)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as file:
        assert f"export-{schema}/" in file.readline()
    stats = collections.Counter()
    pages = list(iter_pages(path, stats))
    assert sum(stats.values()) == n_pages  # every page was read and classified
    assert stats["article"] == len(pages) > 0
    cleaned = "\n".join(clean_wikitext(page.wikitext) for page in pages)
    counts = leftover_counts(cleaned)
    # The articles' own text holds a few literal pipes (the ASCII article's character lists, one
    # typo in the source): allow those, nothing else.
    assert counts.pop("|") <= 3
    assert counts == dict.fromkeys(counts, 0)


def test_enwiki_excerpt_kinds():
    stats = collections.Counter()
    titles = {page.title for page in iter_pages(real_dump(list(REAL_DUMPS)[2]), stats)}
    assert stats == {"article": 98, "redirect": 99, "disambiguation": 8, "non_article_namespace": 1}
    assert {"Anarchism", "Albert Einstein"} <= titles
    assert not titles & {"AccessibleComputing", "Austin (disambiguation)", "Alien", "Aa River"}


def test_newest_revision_is_kept():
    stats = collections.Counter()
    pages = list(iter_pages(real_dump("mwxml__dump.xml"), stats))
    assert [(page.title, page.page_id, page.wikitext) for page in pages] == [("Foo", 1, "Revision 2 text")]
    assert stats == {"article": 1, "non_article_namespace": 1}


def test_redirects_skipped_by_element_and_by_text(tmp_path):
    stats = collections.Counter()
    titles = [page.title for page in iter_pages(real_dump(list(REAL_DUMPS)[1]), stats)]
    assert "AccessibleComputing" not in titles and stats["redirect"] == 1

    dump = tmp_path / "redirects.xml"  # schema 0.11, no <redirect> elements
    dump.write_text(
        export(
            [
                page_xml(1, "Old name", "#REDIRECT [[New name]]"),
                page_xml(2, "Alter Name", "#WEITERLEITUNG [[Neuer Name]]"),
                page_xml(3, "Lower", "  #redirect[[Target]]"),
                page_xml(4, "Set", "Text.\n{{Disambiguation needed|date=May 2024}}"),  # an article
                page_xml(5, "Smith", "'''Smith''' may be:\n* [[A]]\n{{hndis|Smith}}"),
                page_xml(6, "Mercury (disambiguation)", "Mercury may be a planet or a metal."),
                page_xml(7, "Blank", "   "),
                page_xml(8, "Talk:Set", "Discussion.", ns=1),
            ]
        )
    )
    stats = collections.Counter()
    assert [page.title for page in iter_pages(dump, stats)] == ["Set"]
    assert stats == {"redirect": 3, "article": 1, "disambiguation": 2, "empty": 1, "non_article_namespace": 1}


def test_iter_pages_yields_before_the_rest_of_the_dump_arrives(tmp_path):
    """A writer thread sends one page through a pipe and waits: the first page must arrive while
    the rest of the dump does not exist yet."""
    pipe = tmp_path / "stream.xml"
    os.mkfifo(pipe)
    header, first = export([])[: -len("</mediawiki>\n")], page_xml(1, "First", "One.")
    first_page_read, rest_written = threading.Event(), threading.Event()

    def write() -> None:
        with open(pipe, "w", encoding="utf-8") as stream:
            stream.write(header + first)
            stream.flush()
            first_page_read.wait(timeout=10)
            stream.write(page_xml(2, "Second", "Two.") + "</mediawiki>\n")
            rest_written.set()

    writer = threading.Thread(target=write)
    writer.start()
    pages = iter_pages(pipe)
    assert next(pages).title == "First"
    assert not rest_written.is_set()
    first_page_read.set()
    assert [page.title for page in pages] == ["Second"]
    writer.join()


def test_memory_stays_flat_on_a_large_history_dump(tmp_path):
    dump = tmp_path / "large.xml"
    text = "Words of the page. " * 150  # ≈ 3 KB a revision
    long_history = page_xml(1, "Edited often", text, revisions=2000)  # ≈ 6 MB in one page
    dump.write_text(export([long_history] + [page_xml(i, f"Page {i}", text, revisions=3) for i in range(2, 1301)]))
    assert dump.stat().st_size > 15_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_pages(dump))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1300
    assert peak < 1_500_000  # pages and old revisions are freed as they are read


def test_multistream_index_round_trip(tmp_path):
    """Write a multistream dump (header stream, 3 streams of pages, footer stream) and its index,
    then read each stream on its own."""
    dump, index = tmp_path / "wiki-multistream.xml.bz2", tmp_path / "wiki-multistream-index.txt.bz2"
    header = export([])[: -len("</mediawiki>\n")]
    groups = [[(i, f"Article {i}", f"Text of article {i}.") for i in range(start, start + 4)] for start in (1, 5, 9)]
    groups[1][2] = (7, "Gone", "#REDIRECT [[Article 1]]")
    streams, index_lines, offset = [bz2.compress(header.encode())], [], 0
    offset += len(streams[0])
    for group in groups:
        index_lines += [f"{offset}:{page_id}:{title}" for page_id, title, _ in group]
        streams.append(bz2.compress("".join(page_xml(*page) for page in group).encode()))
        offset += len(streams[-1])
    streams.append(bz2.compress(b"</mediawiki>\n"))
    dump.write_bytes(b"".join(streams))
    index.write_bytes(bz2.compress(("\n".join(index_lines) + "\n").encode()))

    ranges = read_multistream_index(index)
    starts = [len(streams[0]), len(streams[0]) + len(streams[1]), len(streams[0]) + len(streams[1]) + len(streams[2])]
    assert ranges == [(starts[0], starts[1]), (starts[1], starts[2]), (starts[2], None)]
    stats = collections.Counter()
    per_stream = [[page.page_id for page in iter_pages_in_range(dump, start, end, stats)] for start, end in ranges]
    assert per_stream == [[1, 2, 3, 4], [5, 6, 8], [9, 10, 11, 12]]
    assert stats == {"article": 11, "redirect": 1}
    whole = [page.page_id for page in iter_pages(dump)]  # bz2.open reads the concatenated streams
    assert whole == [page_id for stream in per_stream for page_id in stream]
    with pytest.raises(DumpFault, match="ends before"):
        list(iter_pages_in_range(dump, starts[0], starts[0] + 20, strict=True))
    report = DumpReport()
    assert list(iter_pages_in_range(dump, starts[0], starts[0] + 20, report=report)) == []
    assert report.truncated and report.cut["compressed_offset"] == starts[0] + 20


# ----------------------------------------------------------------------------------------------------
# Cleaning

WIKITEXT = """{{Infobox river
| name = Test River
| length = {{convert|10|km}}
}}
'''Test River''' ({{lang|fr|Rivière d'essai}}; {{IPAc-en|ˈ|r|ɪ|v|ər}}) is a [[river]] in \
[[France|northern ''France'']].<ref>{{cite web|url=http://x.org|title=T}}</ref> It is ''long''&nbsp;and wide \
&ndash; about {{convert|10|km|mi}}.<ref name="a" /> Its source is at {{convert|4|to|6|m}} altitude.
<!-- hidden comment -->
[[File:River.jpg|thumb|The river near [[Paris]] in {{nowrap|May 2020}}]]
{| class="wikitable"
|-
| a || b
|}
* First item
* Second item with [http://example.org a label] and a bare http://example.org/x URL.
Tom &amp; Jerry<sup>2</sup> <math>x^2</math>.
__TOC__
== History ==
Built in 1900.<ref>Plain note.</ref>

== See also ==
* [[Other]]

== References ==
{{reflist}}

[[Category:Rivers]]
[[de:Testfluss]]"""

EXPECTED = (
    "Test River (Rivière d'essai) is a river in northern France. It is long and wide – about 10 km. "
    "Its source is at 4 to 6 m altitude. First item Second item with a label and a bare URL. "
    "Tom & Jerry2. Built in 1900."
)


def test_clean_wikitext_removes_markup_and_keeps_prose():
    assert clean_wikitext(WIKITEXT) == EXPECTED


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        ("[[a|b]] and [[c]]s and [[:Category:Rivers|river list]]", "b and cs and river list"),
        ("A {{unclosed template and [[link]] text.", "A unclosed template and link text."),
        ("Stray }} closer and ]] bracket.", "Stray closer and bracket."),
        ("{{outer|{{inner|x}}|[[y|z]]}}Kept.", "Kept."),
        ("Born ({{circa}} 1500 – 1560).", "Born (c. 1500 – 1560)."),
        ("Value ( ; ) here, (, also).", "Value here, (also)."),
        ("Text {{box|\n{|\n| cell\n|}\n|}}Rest.", "Text Rest."),  # "|}}" closes the template
        ("{{tpl|a\n|}}Rest.", "Rest."),
        ("Four ''''quotes'''' stay one.", "Four 'quotes' stay one."),
        ("Keep [[wikt:foo|foo]] but not [[fr:Truc]] or [[Image:a.png]].", "Keep foo but not or."),
        ("[[UFC: Fight Night]] and [[ufc:x]]", "UFC: Fight Night and"),  # lower case: interlanguage
        ("Decimal .79 and 3 .", "Decimal .79 and 3."),
    ],
)
def test_clean_wikitext_cases(wikitext, expected):
    assert clean_wikitext(wikitext) == expected


# ----------------------------------------------------------------------------------------------------
# Chunking


def test_chunk_words_loses_no_word_and_respects_the_limit():
    text = clean_wikitext(next(iter_pages(DEMO_DUMP)).wikitext)
    for max_words in (1, 7, 40, 100, 10_000):
        chunks = chunk_words(text, max_words)
        assert " ".join(chunks).split() == text.split()
        assert all(1 <= len(chunk.split()) <= max_words for chunk in chunks)
    # A chunk ends at the last sentence end among its window's final 30 words, or is cut at 100.
    start, words = 0, text.split()
    for chunk in chunk_words(text, 100)[:-1]:
        window = words[start : start + 100]
        sentence_ends = [cut for cut in range(70, 101) if re.search(r"[.!?][\"')]*$", window[cut - 1])]
        assert len(chunk.split()) == (sentence_ends[-1] if sentence_ends else 100)
        start += len(chunk.split())


def test_chunk_words_prefers_sentence_ends_in_the_window_tail():
    text = "a b c d e f g. h i j k l m n o p q r s t"
    assert chunk_words(text, 10) == ["a b c d e f g.", "h i j k l m n o p q", "r s t"]
    assert chunk_words("one. two three four five six seven eight nine ten eleven", 10)[0].endswith("ten")
    assert chunk_words("", 5) == []
    assert chunk_words("  spaced \n out\twords ", 2) == ["spaced out", "words"]
    with pytest.raises(ValueError):
        chunk_words("text", 0)


# ----------------------------------------------------------------------------------------------------
# Faulty and foreign dumps: every complete page is kept, every fault counted and named


def _pages(count: int, words: int = 40, seed: int = 0) -> list[tuple[int, str, str]]:
    import random

    rng = random.Random(seed)  # varied words, so bz2 cannot squeeze many pages into one block
    vocabulary = [f"w{rng.randrange(10**6)}" for _ in range(5000)]
    return [(i, f"Article {i}", " ".join(rng.choice(vocabulary) for _ in range(words)) + ".") for i in range(1, count + 1)]


def test_cut_xml_keeps_every_complete_page_and_reports_the_cut(tmp_path, caplog):
    pages = _pages(5)
    whole = export([page_xml(*page) for page in pages]).encode()
    cut_at = whole.index(b"<title>Article 4</title>") + 10  # inside page 4
    dump = tmp_path / "cut.xml"
    dump.write_bytes(whole[:cut_at])
    stats, report = collections.Counter(), DumpReport()
    kept = list(iter_pages(dump, stats, report=report))
    assert [(p.page_id, p.title, p.wikitext) for p in kept] == pages[:3]  # nothing complete is lost
    assert stats == {"article": 3, "truncated": 1}
    assert report.truncated and report.cut["offset"] == cut_at and report.cut["last_page"] == "Article 3"
    assert "compressed_offset" not in report.cut
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(dump) in warnings[0] and f"byte {cut_at}" in warnings[0]
    with pytest.raises(DumpFault, match=rf"{re.escape(str(dump))}: the dump is cut short at byte {cut_at}"):
        list(iter_pages(dump, strict=True))

    # XML broken before its end (not a cut): the same pages are kept, the fault is named as such.
    broken = tmp_path / "broken.xml"
    broken.write_bytes(whole[:cut_at] + b"<<garbage>>" + whole[cut_at:])
    stats, report = collections.Counter(), DumpReport()
    assert [p.title for p in iter_pages(broken, stats, report=report)] == ["Article 1", "Article 2", "Article 3"]
    assert stats == {"article": 3, "malformed": 1} and not report.truncated and report.cut["fault"] == "malformed"


def test_bz2_cut_mid_block_keeps_the_pages_of_the_blocks_before(tmp_path, caplog):
    pages = _pages(40, words=600)  # ≈ 5 KB of XML a page, ≈ 200 KB in all: two 100 KB blocks and a bit
    whole = bz2.compress(export([page_xml(*page) for page in pages]).encode(), compresslevel=1)
    cut = whole[: len(whole) * 3 // 4]  # inside the last block
    dump = tmp_path / "cut.xml.bz2"
    dump.write_bytes(cut)
    # What a reader can possibly recover: the pages complete in the blocks before the cut.
    readable = bz2.BZ2Decompressor().decompress(cut)
    complete = [page for page in pages if f"<id>{page[0]}</id>".encode() in readable and readable.count(b"</page>") >= page[0]]
    assert 0 < len(complete) < len(pages)
    stats, report = collections.Counter(), DumpReport()
    kept = [(p.page_id, p.title, p.wikitext) for p in iter_pages(dump, stats, report=report)]
    assert kept == complete
    assert stats == {"article": len(complete), "truncated": 1}
    assert report.cut["compressed_offset"] == len(cut) and report.cut["offset"] == len(readable)
    assert report.cut["error"].startswith("Compressed file ended before the end-of-stream marker")
    assert any(r.levelname == "WARNING" and f"byte {len(cut)} of the file" in r.getMessage() for r in caplog.records)
    with pytest.raises(DumpFault, match=f"byte {len(cut)} of the file"):
        list(iter_pages(dump, strict=True))


def test_page_without_id_is_skipped_counted_and_named(tmp_path, caplog):
    no_id = page_xml(2, "Nameless", "Prose of a page that lost its id.").replace("    <id>2</id>\n", "")
    dump = tmp_path / "no-id.xml"
    dump.write_text(export([page_xml(1, "First", "One."), no_id, page_xml(3, "Third", "Three.")]))
    stats, report = collections.Counter(), DumpReport()
    assert [(p.page_id, p.title) for p in iter_pages(dump, stats, report=report)] == [(1, "First"), (3, "Third")]
    assert stats == {"article": 2, "no_id": 1}
    assert report.pages_without_id == ["Nameless"] and not report.truncated
    assert any(r.levelname == "WARNING" and "'Nameless' has no <id>" in r.getMessage() for r in caplog.records)
    with pytest.raises(DumpFault, match="'Nameless' has no <id>"):
        list(iter_pages(dump, strict=True))


def test_newest_revision_by_timestamp_then_id_whatever_the_file_order(tmp_path):
    def revision(revision_id: int, stamp: str, text: str) -> str:
        return f"<revision><id>{revision_id}</id><timestamp>{stamp}</timestamp><text>{text}</text></revision>"

    pages = [
        # newest first in the file (reverse order), three revisions
        f"<page><title>Reversed</title><ns>0</ns><id>1</id>{revision(30, '2024-03-01T00:00:00Z', 'Newest.')}"
        f"{revision(20, '2023-01-01T00:00:00Z', 'Middle.')}{revision(10, '2022-01-01T00:00:00Z', 'Oldest.')}</page>",
        # same timestamp: the higher revision id wins
        f"<page><title>Tie</title><ns>0</ns><id>2</id>{revision(41, '2024-01-01T00:00:00Z', 'Later id.')}"
        f"{revision(40, '2024-01-01T00:00:00Z', 'Earlier id.')}</page>",
    ]
    dump = tmp_path / "revisions.xml"
    dump.write_text(export(pages))
    assert [(p.title, p.wikitext) for p in iter_pages(dump)] == [("Reversed", "Newest."), ("Tie", "Later id.")]


LOCALIZED_SITEINFO = {
    "vi": ('<namespace key="-2">Phương tiện</namespace><namespace key="6">Tập tin</namespace>'
           '<namespace key="14">Thể loại</namespace>'),
    "fo": '<namespace key="6">Mynd</namespace><namespace key="14">Bólkur</namespace>',
}


def test_localized_namespaces_and_sections_are_cut(tmp_path):
    vi_text = (
        "'''Sông Hồng''' là một [[con sông]] ở [[Việt Nam]].\n"
        "[[Tập tin:Song Hong.jpg|nhỏ|Sông Hồng ở [[Hà Nội]]]]\n"
        "Sông dài 1149 km.\n== Xem thêm ==\n* [[Sông Đà]]\n== Tham khảo ==\n{{tham khảo}}\n"
        "[[Thể_loại:Sông Việt Nam]]\n[[Category:Rivers]]"
    )
    fo_text = "'''Tórshavn''' er høvuðsstaður.\n[[Mynd:Torshavn.jpg|thumb|Havnin]]\n== Keldur ==\nx\n[[Bólkur:Býir]]"
    for language, title, text, expected in [
        ("vi", "Sông Hồng", vi_text, "Sông Hồng là một con sông ở Việt Nam. Sông dài 1149 km."),
        ("fo", "Tórshavn", fo_text, "Tórshavn er høvuðsstaður."),
    ]:
        dump = tmp_path / f"{language}wiki.xml"
        siteinfo = f"<siteinfo><sitename>Wikipedia</sitename><namespaces>{LOCALIZED_SITEINFO[language]}</namespaces></siteinfo>"
        dump.write_text(export([page_xml(1, title, text)]).replace("<siteinfo><sitename>Test</sitename></siteinfo>", siteinfo))
        report = DumpReport()
        (page,) = iter_pages(dump, report=report)
        rules = CleaningRules.for_dump(report.namespaces, [f"@{language}", "@en"])
        assert clean_wikitext(page.wikitext, rules) == expected
        # the default (English) rules let the localized names leak: the fixture does test something
        leaked = clean_wikitext(page.wikitext)
        assert leaked != expected and ("Sông Việt Nam" in leaked or "Býir" in leaked)


def test_appendix_sections_config_entries():
    rules = CleaningRules.for_dump({}, ["@de", "Eigene Liste"])
    text = "Ein Satz.\n== Eigene_Liste ==\nweg"
    assert clean_wikitext(text, rules) == "Ein Satz."
    assert clean_wikitext("Ein Satz.\n== Weblinks ==\nweg", rules) == "Ein Satz."
    assert clean_wikitext("A sentence.\n== See also ==\ngone", rules) == "A sentence. gone"  # not asked for
    with pytest.raises(ValueError, match="unknown set '@xx'"):
        CleaningRules.for_dump({}, ["@xx"])


def test_extract_stage_records_a_cut_dump_and_strict_stops(tmp_path, caplog):
    import json
    import logging

    import pyarrow.parquet as pq

    from dnd.stages.text_image import WikiTextConfig, extract_wiki_text

    pages = _pages(6, words=30)
    whole = bz2.compress(export([page_xml(*page) for page in pages]).encode())
    dump = tmp_path / "cut.xml.bz2"
    dump.write_bytes(whole[:-40])  # the end-of-stream marker and the last bytes are missing
    # one bz2 block: nothing can be decompressed, and the stage still finishes and says so
    out = tmp_path / "chunks.parquet"
    with caplog.at_level(logging.INFO):
        stats = extract_wiki_text(WikiTextConfig(dump=str(dump), min_words=1), out)
    assert stats["truncated"] == 1 and pq.read_table(out).num_rows == 0
    record = json.loads((tmp_path / "chunks.parquet.provenance.json").read_text())
    assert record["dump"]["truncated"] is True and record["dump"]["cut"]["compressed_offset"] == len(whole) - 40
    assert any(r.levelname == "WARNING" and "TRUNCATED dump" in r.getMessage() for r in caplog.records)

    xml = export([page_xml(*page) for page in pages]).encode()
    dump = tmp_path / "cut.xml"
    dump.write_bytes(xml[: xml.index(b"<title>Article 5</title>")])
    stats = extract_wiki_text(WikiTextConfig(dump=str(dump), min_words=1), out)
    assert stats["kept_article"] == 4 and pq.read_table(out)["title"].to_pylist() == [f"Article {i}" for i in range(1, 5)]
    assert pq.read_table(out)["text"].to_pylist() == [page[2] for page in pages[:4]]
    out.unlink()
    with pytest.raises(DumpFault, match=f"{re.escape(str(dump))}: the dump is cut short at byte"):
        extract_wiki_text(WikiTextConfig(dump=str(dump), min_words=1, strict=True), out)
    assert not out.exists()  # strict: nothing written
