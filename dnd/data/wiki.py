"""Wikipedia dumps → clean prose: stream pages from a MediaWiki XML export, clean their wikitext, chunk it.

Three jobs, in reading order:

1. Reading. `iter_pages` streams a `pages-articles` export (plain `.xml`, `.xml.bz2` or a multistream
   `.bz2`) with an incremental XML parser, page by page, clearing each page once read so memory stays
   flat; it yields main-namespace articles only and counts what it skips. `read_multistream_index` and
   `iter_pages_in_range` read one bz2 stream (about 100 pages) of a multistream dump, so extraction
   can be split across workers. A dump that breaks off (an interrupted download: XML without its
   closing tags, a bz2 stream cut mid-block) keeps every page read before the cut and is reported in
   a `DumpReport` (`truncated`, where); a page without `<id>` is skipped and named there; `strict=True`
   makes either an error (`DumpFault`) naming the file and the offset.
2. Cleaning. `clean_wikitext` turns an article's wikitext into one line of plain prose. Cheap,
   unambiguous markup (comments, trailing appendix sections, `<ref>`s, non-prose tags, headings,
   bold/italic quotes, templates, tables, files, categories, interlanguage links) is removed first with
   compiled regexes and one linear bracket scanner; mwparserfromhell then parses only what is left
   (links, external links, HTML tags, entities, lists) and `strip_code` renders it as text. What is
   hidden (file and category links) and which trailing sections are cut are `CleaningRules`: the
   dump's own localized namespace names (from `<siteinfo>`) plus the canonical English ones, and a
   configurable list of appendix headings (`APPENDIX_SECTIONS` has the sets of a few large wikis).
3. Chunking. `chunk_words` cuts prose into windows of at most `max_words` words, at sentence ends where
   it can, for rendering one chunk per image.

Template policy: every template is dropped (infoboxes, citations, navboxes, maintenance tags, parser
functions) except a few inline ones that carry prose (`_TEXT_TEMPLATES`): language and transliteration
wrappers (`{{lang|fr|texte}}` → "texte"), formatting wrappers (`{{nowrap|…}}`), unit conversions
(`{{convert|10|km|mi}}` → "10 km", the converted value dropped) and dash/circa shorthands. Dropping them
would leave holes inside sentences.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import html
import itertools
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import BinaryIO

import mwparserfromhell

READ_CHUNK_BYTES = 1 << 16  # bytes handed to the XML parser at a time (keeps memory flat)
log = logging.getLogger("dnd.wiki")


@dataclass(frozen=True)
class WikiPage:
    title: str
    page_id: int
    namespace: int  # 0 = main (articles); 1 = Talk; …
    wikitext: str  # the newest revision's text


# ----------------------------------------------------------------------------------------------------
# Reading dumps

# `#REDIRECT` and the localised forms of the largest wikis (the `<redirect>` element is the primary
# signal; this catches exports that lack it).
_REDIRECT = re.compile(
    r"\s*#\s*(?:redirect|redirection|redirección|redirecionamento|weiterleitung|rinvia|rinvio|"
    r"doorverwijzing|przekieruj|patrz|перенаправление|перенаправлення|yönlendirme|omdirigering|"
    r"ohjaus|átirányítás|přesměruj|転送|リダイレクト|重定向|重新導向|넘겨주기|تحويل|הפניה)\b",
    re.IGNORECASE,
)

# Disambiguation and set-index templates (`{{disambiguation|geo}}`, `{{hndis|Smith, John}}`, …); a
# name must be followed by `|` or `}}`, so inline tags such as `{{disambiguation needed}}` don't count.
_DISAMBIGUATION_TEMPLATE = re.compile(
    r"\{\{\s*(?:template:\s*)?(?:[a-z -]*disambiguation|disambig|disamb|dab|mathdab|[a-z-]*dis|"
    r"set index article|set index|sia|[a-z]+index)\s*(?:\||\}\})",
    re.IGNORECASE,
)
_DISAMBIGUATION_TITLE = re.compile(r"\(disambiguation\)\s*$", re.IGNORECASE)


def is_redirect_text(wikitext: str) -> bool:
    return _REDIRECT.match(wikitext) is not None


def is_disambiguation(title: str, wikitext: str) -> bool:
    return bool(_DISAMBIGUATION_TITLE.search(title) or _DISAMBIGUATION_TEMPLATE.search(wikitext))


class DumpFault(ValueError):
    """A dump that is cut short or holds a page without `<id>`, raised only in strict mode."""


@dataclass
class DumpReport:
    """What reading a dump found besides pages: filled in while pages stream (namespaces before the first)."""

    file: str = ""
    namespaces: dict[str, int] = field(default_factory=dict)  # "Thể loại" → 14, from <siteinfo>
    truncated: bool = False
    # Where the input broke off: `fault` ("truncated", or "malformed" XML before the end), bytes of XML
    # read (`offset`; the parser's message has the line and column), for a compressed dump also the
    # byte of the file (`compressed_offset`), the last page kept before it and the reader's message.
    cut: dict[str, object] | None = None
    pages_without_id: list[str] = field(default_factory=list)  # titles of articles skipped for lack of <id>

    def as_dict(self) -> dict[str, object]:
        return {"truncated": self.truncated, "cut": self.cut, "pages_without_id": self.pages_without_id}


class _CutInput(Exception):
    """Raised by a chunk source whose bytes end before the end of its (compressed) stream."""

    def __init__(self, detail: str, compressed_offset: int | None):
        super().__init__(detail)
        self.compressed_offset = compressed_offset


def iter_pages(
    dump: Path,
    stats: collections.Counter | None = None,
    *,
    report: DumpReport | None = None,
    strict: bool = False,
) -> Iterator[WikiPage]:
    """Stream the main-namespace articles of a MediaWiki XML export (`.xml`, `.xml.bz2`, multistream
    `.bz2`), newest revision of each. Skipped pages are counted in `stats` under "redirect",
    "disambiguation", "non_article_namespace", "empty" and "no_id"; kept ones under "article". A cut
    dump ends the stream after its last complete page (`report.truncated`, counted as "truncated"),
    or raises DumpFault when `strict`."""
    dump = Path(dump)
    report = report if report is not None else DumpReport()
    report.file = str(dump)
    with open(dump, "rb") as raw, _decompressed(dump, raw) as file:

        def chunks() -> Iterator[bytes]:
            # read1 returns what is available without waiting for a full chunk, so a page is yielded
            # as soon as its bytes arrive (also from a pipe).
            try:
                yield from iter(lambda: file.read1(READ_CHUNK_BYTES), b"")
            except EOFError as err:  # bz2: "Compressed file ended before the end-of-stream marker"
                raise _CutInput(str(err), raw.tell()) from err

        yield from _pages_from_chunks(chunks(), stats, report, strict)


def read_multistream_index(index: Path) -> list[tuple[int, int | None]]:
    """Byte ranges `(start, end)` of the bz2 streams of a multistream dump, from its
    `*-multistream-index.txt[.bz2]` (lines `offset:page_id:title`); the last range ends at `None`
    (end of file)."""
    index = Path(index)
    opener = bz2.open if index.suffix == ".bz2" else open
    with opener(index, "rt", encoding="utf-8") as lines:
        offsets = sorted({int(line.split(":", 1)[0]) for line in lines if line.strip()})
    return list(zip(offsets, [*offsets[1:], None]))


def iter_pages_in_range(
    dump: Path,
    start: int,
    end: int | None = None,
    stats: collections.Counter | None = None,
    *,
    report: DumpReport | None = None,
    strict: bool = False,
) -> Iterator[WikiPage]:
    """Articles of the one bz2 stream that starts at byte `start` of a multistream dump (a range from
    `read_multistream_index`); only that stream is read and decompressed. A stream cut short is
    handled as in `iter_pages`."""
    report = report if report is not None else DumpReport()
    report.file = str(dump)
    # A stream holds bare `<page>` elements: wrap them in a root element to make a document. A cut
    # stream gets no closing tag (the parser then reports the document as unfinished, like a cut file).
    chunks = itertools.chain([b"<mediawiki>"], _one_bz2_stream(Path(dump), start, end), [b"</mediawiki>"])
    return _pages_from_chunks(chunks, stats, report, strict)


def _decompressed(dump: Path, raw: BinaryIO) -> contextlib.AbstractContextManager[BinaryIO]:
    if dump.suffix == ".bz2":
        return bz2.open(raw, "rb")  # also reads concatenated (multistream) bz2 streams
    return contextlib.nullcontext(raw)


def _one_bz2_stream(dump: Path, start: int, end: int | None) -> Iterator[bytes]:
    decompressor = bz2.BZ2Decompressor()
    with open(dump, "rb") as file:
        file.seek(start)
        remaining = math.inf if end is None else end - start
        while not decompressor.eof:
            compressed = file.read(int(min(READ_CHUNK_BYTES, remaining)))
            if not compressed:
                raise _CutInput(f"the bz2 stream at byte {start} ends before its end of stream", file.tell())
            remaining -= len(compressed)
            yield decompressor.decompress(compressed)


def _pages_from_chunks(
    chunks: Iterable[bytes], stats: collections.Counter | None, report: DumpReport, strict: bool
) -> Iterator[WikiPage]:
    parser = ET.XMLPullParser(events=("start", "end"))
    reader = _PageReader(stats if stats is not None else collections.Counter(), report, strict)
    offset = 0  # bytes of XML handed to the parser
    closing = False  # a parse error only at the end means the document stops early: a cut file
    try:
        for chunk in chunks:
            parser.feed(chunk)
            offset += len(chunk)
            yield from reader.consume(parser.read_events())
        closing = True
        parser.close()  # raises ParseError on a truncated document
        yield from reader.consume(parser.read_events())
    except (_CutInput, ET.ParseError) as err:
        fault = "truncated" if closing or isinstance(err, _CutInput) else "malformed"
        cut = {"fault": fault, "offset": offset, "last_page": reader.last_title, "error": str(err)}
        if isinstance(err, _CutInput) and err.compressed_offset is not None:
            cut["compressed_offset"] = err.compressed_offset
        where = f"byte {offset} of its XML" + (
            f" (byte {cut['compressed_offset']} of the file)" if "compressed_offset" in cut else ""
        )
        what = "cut short" if fault == "truncated" else "malformed (not a cut: the XML is broken before its end)"
        if strict:
            raise DumpFault(f"{report.file}: the dump is {what} at {where}: {err}") from err
        report.truncated, report.cut = fault == "truncated", cut
        reader.stats[fault] += 1
        kept = f"the last {reader.last_title!r}" if reader.last_title is not None else "none was complete"
        log.warning("%s: the dump is %s at %s (%s); kept every complete page before it (%s)", report.file, what, where, err, kept)


def _revision_order(revision: ET.Element, tag_timestamp: str, tag_id: str) -> tuple[str, int]:
    """Newest first by timestamp (ISO 8601 sorts as text), then by revision id; missing ones sort oldest."""
    revision_id = revision.findtext(tag_id) or ""
    return revision.findtext(tag_timestamp) or "", int(revision_id) if revision_id.strip().isdigit() else -1


class _PageReader:
    """Turns the parser's (event, element) stream into WikiPages, freeing each page once read."""

    def __init__(self, stats: collections.Counter, report: DumpReport, strict: bool):
        self.stats = stats
        self.report = report
        self.strict = strict
        self.root: ET.Element | None = None
        self.page: ET.Element | None = None  # the page being read
        self.namespace_names = report.namespaces  # "Talk" → 1, from <siteinfo>
        self.last_title: str | None = None  # of the last complete page (where a cut dump broke off)

    def _set_schema(self, root: ET.Element) -> None:
        # Elements are qualified with the export schema's namespace ("{…/export-0.10/}page"), or not
        # at all for a bare multistream fragment: take it from the root tag, whatever the version.
        self.root = root
        xmlns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        self.tag_page, self.tag_revision, self.tag_namespace = (xmlns + t for t in ("page", "revision", "namespace"))
        self.tag_title, self.tag_ns, self.tag_id = (xmlns + t for t in ("title", "ns", "id"))
        self.tag_redirect, self.tag_text, self.tag_timestamp = xmlns + "redirect", xmlns + "text", xmlns + "timestamp"

    def consume(self, events: Iterable[tuple[str, ET.Element]]) -> Iterator[WikiPage]:
        for event, element in events:
            if event == "start":
                if self.root is None:
                    self._set_schema(element)
                elif element.tag == self.tag_page:
                    self.page = element
                continue
            tag = element.tag
            if tag == self.tag_revision and self.page is not None:
                # Only the newest revision (by timestamp, then id: exports need not be in order) is
                # kept: the older of the two is dropped as soon as the second is complete, so
                # full-history exports stay flat in memory too.
                revisions = self.page.findall(self.tag_revision)
                if len(revisions) > 1:
                    order = [_revision_order(r, self.tag_timestamp, self.tag_id) for r in revisions]
                    newest = max(range(len(revisions)), key=order.__getitem__)
                    for index, older in enumerate(revisions):
                        if index != newest:
                            self.page.remove(older)
            elif tag == self.tag_page:
                page = self._classify(element)
                self.last_title = element.findtext(self.tag_title)
                self.root.clear()  # the page (and siteinfo before it) are the root's only children
                self.page = None
                if page is not None:
                    yield page
            elif tag == self.tag_namespace and element.text:
                self.namespace_names[element.text] = int(element.get("key", "0"))

    def _classify(self, page: ET.Element) -> WikiPage | None:
        title = page.findtext(self.tag_title) or ""
        ns = page.findtext(self.tag_ns)
        namespace = int(ns) if ns is not None else self._namespace_from_title(title)
        revisions = page.findall(self.tag_revision)
        wikitext = (revisions[-1].findtext(self.tag_text) or "") if revisions else ""
        if namespace != 0:
            kind = "non_article_namespace"
        elif page.find(self.tag_redirect) is not None or is_redirect_text(wikitext):
            kind = "redirect"
        elif not wikitext.strip():
            kind = "empty"
        elif is_disambiguation(title, wikitext):
            kind = "disambiguation"
        elif not (page.findtext(self.tag_id) or "").strip().isdigit():
            if self.strict:
                raise DumpFault(f"{self.report.file}: page {title!r} has no <id> (a MediaWiki export gives every page one)")
            kind = "no_id"
            self.report.pages_without_id.append(title)
            log.warning("%s: page %r has no <id>; skipped", self.report.file, title)
        else:
            kind = "article"
        self.stats[kind] += 1
        if kind != "article":
            return None
        return WikiPage(title=title, page_id=int(page.findtext(self.tag_id)), namespace=0, wikitext=wikitext)

    def _namespace_from_title(self, title: str) -> int:
        # Exports before schema 0.6 have no <ns>: the namespace is the title's prefix.
        prefix, colon, _ = title.partition(":")
        return self.namespace_names.get(prefix, 0) if colon else 0


# ----------------------------------------------------------------------------------------------------
# Cleaning wikitext

# Patterns that must match at a line start begin with "\n" (the text gets a leading newline): a literal
# first character lets the regex engine skip ahead instead of trying every position.
# Appendix sections: everything from the first such heading on is dropped. The headings of a few
# large wikis; a config names the sets it wants ("@en", "@de", …) and may add headings of its own.
APPENDIX_SECTIONS: dict[str, tuple[str, ...]] = {
    "en": (
        "references", "external links", "see also", "further reading", "notes", "bibliography", "sources",
        "footnotes", "citations", "works cited", "notes and references", "references and notes",
        "sources and further reading", "external links and references", "reference", "note",
        "bibliography and notes",
    ),
    "de": ("literatur", "weblinks", "einzelnachweise", "siehe auch", "anmerkungen", "quellen", "belege", "fußnoten", "referenzen"),
    "fr": ("notes et références", "références", "voir aussi", "liens externes", "bibliographie", "articles connexes", "notes", "annexes", "sources"),
    "es": ("referencias", "véase también", "enlaces externos", "bibliografía", "notas", "fuentes", "notas y referencias"),
    "it": ("note", "bibliografia", "voci correlate", "altri progetti", "collegamenti esterni", "fonti"),
    "pt": ("referências", "ver também", "ligações externas", "bibliografia", "notas", "fontes"),
    "nl": ("referenties", "zie ook", "externe links", "externe link", "bronnen", "literatuur", "noten", "bronvermelding"),
    "pl": ("przypisy", "bibliografia", "linki zewnętrzne", "zobacz też", "uwagi"),
    "ru": ("примечания", "литература", "ссылки", "см. также", "источники"),
    "vi": ("tham khảo", "xem thêm", "liên kết ngoài", "chú thích", "ghi chú", "đọc thêm", "nguồn"),
    "ja": ("脚注", "出典", "参考文献", "関連項目", "外部リンク"),
    "zh": ("参考文献", "参考资料", "外部链接", "参见", "注释", "參考文獻", "參考資料", "外部連結", "參見", "註釋"),
    "fo": ("keldur", "sí eisini", "uttanífyri leinkjur", "tilvísingar", "slóðir úteftir"),
}


def appendix_headings(entries: Iterable[str]) -> tuple[str, ...]:
    """Config entries → headings: "@de" names a set of APPENDIX_SECTIONS, anything else is a heading."""
    headings: list[str] = []
    for entry in entries:
        if entry.startswith("@"):
            if entry[1:] not in APPENDIX_SECTIONS:
                raise ValueError(f"appendix_sections: unknown set {entry!r}; known: {', '.join('@' + k for k in APPENDIX_SECTIONS)}")
            headings.extend(APPENDIX_SECTIONS[entry[1:]])
        else:
            headings.append(entry)
    return tuple(dict.fromkeys(_normalized_name(heading) for heading in headings))


def _normalized_name(name: str) -> str:
    """How MediaWiki compares namespace names and headings here: case and `_`/space runs don't matter."""
    return " ".join(name.replace("_", " ").split()).lower()


def _name_pattern(names: Iterable[str]) -> str:
    return "|".join(re.escape(name).replace(r"\ ", r"[ _\t]+") for name in sorted(names, key=len, reverse=True))


_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_REF = re.compile(r"<ref\b[^>]*/\s*>|<ref\b[^>]*>.*?</ref\s*>|</?ref\b[^>]*>", re.IGNORECASE | re.DOTALL)
# Tags whose content is not prose: dropped with their content.
_DROPPED_TAG = re.compile(
    r"<(gallery|math|chem|ce|score|timeline|syntaxhighlight|source|imagemap|graph|mapframe|maplink|"
    r"references|hiero|templatedata|inputbox|categorytree|includeonly|table)\b[^>]*?(?:/>|>.*?</\1\s*>)",
    re.IGNORECASE | re.DOTALL,
)
# Formatting tags: dropped, content kept; block-level ones leave a space so words don't merge.
_BLOCK_TAG = re.compile(r"</?(?:br|hr|p|div|center|blockquote|poem|ul|ol|li|dl|dt|dd)\b[^>]*>", re.IGNORECASE)
_INLINE_TAG = re.compile(
    r"</?(?:sub|sup|small|big|span|font|s|u|del|ins|strike|code|tt|kbd|samp|var|cite|abbr|b|i|em|"
    r"strong|q|onlyinclude|noinclude)\b[^>]*>",
    re.IGNORECASE,
)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"\n=[^\n]*=[ \t]*(?=\n|\Z)")
_LIST_MARKER = re.compile(r"\n[*#:;]+")  # list items and indents are kept as text
# Link prefixes whose target is not shown as text: the canonical English names (every wiki accepts
# them) and the largest wikis' names; a dump's own localized names come from its <siteinfo>.
_HIDDEN_LINK_NAMESPACES = frozenset(
    "file image category datei bild kategorie fichier catégorie archivo imagen categoría ficheiro "
    "imagem categoria immagine файл изображение категория".split()
)
HIDDEN_NAMESPACE_KEYS = (6, 14)  # File, Category: links into them draw no text (Media: links do)
# Interlanguage prefixes ("de", "zh-min-nan"), written in lower case, unlike titles such as "UFC: …".
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]+)*|simple")


@dataclass(frozen=True)
class CleaningRules:
    """What `clean_wikitext` hides: links into these namespaces (normalized names) and everything from
    the first of these appendix headings on. `for_dump` adds a dump's localized namespace names."""

    hidden_namespaces: frozenset[str] = _HIDDEN_LINK_NAMESPACES
    appendix_sections: tuple[str, ...] = APPENDIX_SECTIONS["en"]

    @classmethod
    def for_dump(cls, namespaces: dict[str, int], appendix_sections: Iterable[str] = ("@en",)) -> "CleaningRules":
        return _rules_for(frozenset(namespaces.items()), tuple(appendix_sections))

    @cached_property
    def trailing_section(self) -> re.Pattern:
        return re.compile(rf"\n=+[ \t]*(?:{_name_pattern(self.appendix_sections)})[ \t]*=+[ \t]*(?=\n|\Z)", re.IGNORECASE)

    # Links without nested brackets become their text by regex; files, categories and interlanguage
    # links (which never have a label) are left to the scanner.
    @cached_property
    def labelled_link(self) -> re.Pattern:
        hidden = _name_pattern(self.hidden_namespaces)
        return re.compile(rf"\[\[(?!\s*(?:{hidden})\s*:)[^\[\]{{}}|\n]*\|([^\[\]{{}}]*)\]\]", re.IGNORECASE)

    @cached_property
    def plain_link(self) -> re.Pattern:
        hidden = _name_pattern(self.hidden_namespaces)
        return re.compile(
            rf"\[\[(?!\s*(?:{hidden}|(?-i:{_LANGUAGE_CODE.pattern}))\s*:):?([^\[\]{{}}|\n]*)\]\]", re.IGNORECASE
        )


@lru_cache(maxsize=16)
def _rules_for(namespaces: frozenset[tuple[str, int]], appendix_sections: tuple[str, ...]) -> CleaningRules:
    localized = {_normalized_name(name) for name, key in namespaces if key in HIDDEN_NAMESPACE_KEYS}
    return CleaningRules(_HIDDEN_LINK_NAMESPACES | localized, appendix_headings(appendix_sections))


DEFAULT_RULES = CleaningRules()
# Brackets the scanner matches: templates, links and tables (`{|` and `|}` open a line; "|}}" there
# closes a template).
_BRACKET_TOKEN = re.compile(r"\{\{|\}\}|\[\[|\]\]|\n[ \t:]*\{\||\n[ \t:]*\|\}(?!\})")
_OPENERS = {"{{": "template", "[[": "link", "{|": "table"}
_CLOSERS = {"}}": "template", "]]": "link", "|}": "table"}
# Interwiki prefixes that are language-code shaped but link visibly within the text.
_VISIBLE_INTERWIKI = frozenset({"wikt", "s", "q", "b", "n", "v", "w", "m", "c", "d", "mw", "voy"})
_NAMED_ARGUMENT = re.compile(r"\s*[^=|\[\]{}]+=")
_TEMPLATE_ARGUMENT_SPLIT = re.compile(r"(\{\{|\}\}|\[\[|\]\]|\|)")
_RANGE_WORDS = frozenset({"to", "-", "–", "and", "or", "by", "x", "×", "+"})
_BARE_URL = re.compile(r"(?:https?|ftp)://\S*")
# After whitespace is collapsed to single spaces:
_EMPTY_BRACKETS = re.compile(r"\((?: ?[,;:.–—-])* ?\)|\[ ?\]")  # "()", "( ; )" left by templates
_BRACKET_OPEN_SEPARATOR = re.compile(r"\((?: ?[,;:])+ ?")  # "( ; born 1900)" → "(born 1900)"
_BRACKET_CLOSE_SEPARATOR = re.compile(r"[,;:](?: ?[,;:])* ?\)")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" (?=[,.;:!?)](?!\w))")  # not before ".79"


def clean_wikitext(wikitext: str, rules: CleaningRules = DEFAULT_RULES) -> str:
    """An article's wikitext as one line of plain prose: no templates, references, tables, files,
    categories, headings or appendix sections; link and label text kept; entities decoded."""
    text = _COMMENT.sub("", "\n" + wikitext)
    appendix = rules.trailing_section.search(text)
    if appendix:
        text = text[: appendix.start()]
    text = _REF.sub("", text)
    text = _DROPPED_TAG.sub("", text)
    text = _BLOCK_TAG.sub(" ", text)
    text = _INLINE_TAG.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _HEADING.sub("\n", text)
    text = _LIST_MARKER.sub("\n ", text)
    # '' italic, ''' bold, ''''' both; four apostrophes are a literal one plus bold.
    text = text.replace("'''", "").replace("''", "")
    text = rules.labelled_link.sub(r"\1", text)
    text = rules.plain_link.sub(r"\1", text)
    text = _strip_bracketed(text, rules.hidden_namespaces)
    # Left for the parser: nested links, external links, entities, lists, nowiki and other tags.
    text = mwparserfromhell.parse(text).strip_code(normalize=True, collapse=True)
    return _tidy(html.unescape(text))


def _tidy(text: str) -> str:
    if "://" in text:
        text = _BARE_URL.sub("", text)
    text = " ".join(text.split())
    text = _BRACKET_OPEN_SEPARATOR.sub("(", text)
    text = _BRACKET_CLOSE_SEPARATOR.sub(")", text)
    text = _EMPTY_BRACKETS.sub("", text.replace("( ", "("))
    text = _SPACE_BEFORE_PUNCTUATION.sub("", text.replace("  ", " "))
    return text.replace(",.", ".").strip()  # ",." where a formula or template ended a sentence


def _strip_bracketed(text: str, hidden_namespaces: frozenset[str]) -> str:
    """Remove top-level templates, tables and file/category/interlanguage links in one linear pass
    that matches `{{ }}`, `[[ ]]` and `{| |}` with a stack; other links are left for the parser."""
    pieces: list[str] = []
    emitted = 0  # text[:emitted] is settled
    stack: list[tuple[str, int, int]] = []  # (kind, start of opener, end of opener)
    tokens = _BRACKET_TOKEN.finditer(text)
    while True:
        token = next(tokens, None)
        if token is None:
            if not stack:
                break
            # An opener never closed is literal text in MediaWiki: drop its brackets, rescan after it.
            _, start, opener_end = stack[0]
            pieces.append(text[emitted:start])
            emitted = opener_end
            stack.clear()
            tokens = _BRACKET_TOKEN.finditer(text, opener_end)
            continue
        bracket = token.group().lstrip("\n \t:")
        if bracket in _OPENERS:
            stack.append((_OPENERS[bracket], token.start(), token.end()))
            continue
        kind = _CLOSERS[bracket]
        level = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == kind), None)
        if level is None:
            if not stack:  # a stray closer: drop it
                pieces.append(text[emitted : token.start()])
                emitted = token.end()
            continue
        _, start, opener_end = stack[level]
        del stack[level:]  # openers left unclosed inside this span go with it
        if not stack:
            pieces.append(text[emitted:start])
            pieces.append(_replace_bracketed(kind, text[opener_end : token.start()], text[start : token.end()], hidden_namespaces))
            emitted = token.end()
    pieces.append(text[emitted:])
    return "".join(pieces)


def _replace_bracketed(kind: str, inner: str, whole: str, hidden_namespaces: frozenset[str]) -> str:
    if kind == "table":
        return ""
    if kind == "template":
        return _template_text(inner, hidden_namespaces)
    target = inner.lstrip()
    if target.startswith(":"):  # [[:Category:X|label]] is an ordinary, visible link
        return whole
    prefix, colon, _ = target.partition(":")
    prefix = prefix.strip()
    if colon and (
        _normalized_name(prefix) in hidden_namespaces
        or (_LANGUAGE_CODE.fullmatch(prefix) and prefix not in _VISIBLE_INTERWIKI and "|" not in inner)
    ):
        return ""  # files with their captions, categories, interlanguage links
    return whole


def _template_arguments(inner: str) -> list[str]:
    """Split a template's inside at its own `|`s (not those of nested links or templates)."""
    parts, depth, current = [], 0, []
    for piece in _TEMPLATE_ARGUMENT_SPLIT.split(inner):
        if piece == "|" and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += piece in ("{{", "[[")
        depth -= piece in ("}}", "]]") and depth > 0
        current.append(piece)
    parts.append("".join(current))
    return parts


def _positional(arguments: list[str], hidden_namespaces: frozenset[str]) -> list[str]:
    return [_strip_bracketed(a, hidden_namespaces).strip() for a in arguments[1:] if not _NAMED_ARGUMENT.match(a)]


def _first(values: list[str]) -> str:
    return values[0] if values else ""


def _convert_text(values: list[str]) -> str:
    # {{convert|10|km|mi}} → "10 km"; {{convert|10|to|20|km}} → "10 to 20 km"
    if len(values) >= 4 and values[1] in _RANGE_WORDS:
        return " ".join(values[:4])
    return " ".join(values[:2])


# Inline templates rendered as text: lowercased name → positional arguments → text.
_TEXT_TEMPLATES: dict[str, Callable[[list[str]], str]] = {
    "lang": lambda v: v[1] if len(v) > 1 else "",
    "transl": lambda v: v[-1] if len(v) > 1 else "",
    "transliteration": lambda v: v[-1] if len(v) > 1 else "",
    "convert": _convert_text,
    "cvt": _convert_text,
    "circa": lambda v: "c. " + v[0] if v else "c.",
    "c.": lambda v: "c. " + v[0] if v else "c.",
    "ndash": lambda v: "–",
    "mdash": lambda v: "—",
    "snd": lambda v: " – ",
    "spaced ndash": lambda v: " – ",
    "'": lambda v: "'",
    "nbsp": lambda v: " ",
    **dict.fromkeys(
        ("nowrap", "nobr", "small", "smaller", "big", "sc", "smallcaps", "nobold", "noitalic", "em"), _first
    ),
}


def _template_text(inner: str, hidden_namespaces: frozenset[str]) -> str:
    name = inner.split("|", 1)[0].strip().lower().replace("_", " ")
    render = _first if name.startswith("lang-") else _TEXT_TEMPLATES.get(name)  # {{lang-fr|texte}}
    if render is None:
        return ""
    return render(_positional(_template_arguments(inner), hidden_namespaces))


# ----------------------------------------------------------------------------------------------------
# Chunking prose

_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*$")
SENTENCE_SEARCH_FRACTION = 0.3  # a chunk may end at a sentence end within its last 30 % of words


def chunk_words(text: str, max_words: int) -> list[str]:
    """Consecutive chunks of at most `max_words` whitespace-separated words (rejoined with single
    spaces), cut after the last sentence end in the final ~30 % of the window when there is one."""
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    words = text.split()
    shortest = max(1, math.ceil(max_words * (1 - SENTENCE_SEARCH_FRACTION)))
    chunks, start = [], 0
    while start < len(words):
        end = min(start + max_words, len(words))
        if end < len(words):
            end = next(
                (cut for cut in range(end, start + shortest - 1, -1) if _SENTENCE_END.search(words[cut - 1])),
                end,
            )
        chunks.append(" ".join(words[start:end]))
        start = end
    return chunks
