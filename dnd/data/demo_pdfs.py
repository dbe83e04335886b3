"""Small arXiv-like PDFs for the demo, laid out at run time from the project's own prose.

Each paper has a title, authors, an abstract, numbered sections, body text, numbered equations
written as text, a drawn figure with a caption, an arXiv stamp in the left margin and page numbers;
every second paper is set in two columns. Same `seed` ⇒ same bytes (no dates, ids or metadata).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import pymupdf

from dnd.atomic import atomic_path

PARAGRAPHS = (
    "An image tokenizer turns a picture into a short sequence of discrete codes that a language model can "
    "read and write. The encoder shrinks every patch of sixteen by sixteen pixels into one feature vector. "
    "The quantizer replaces that vector with the index of its nearest codebook entry. The decoder maps the "
    "grid of indices back to pixels. Whatever the codes cannot express is lost before generation begins.",
    "The information a code map can carry is easy to bound. A codebook of N entries stores log2 N bits per "
    "position, while the patch it stands for holds twenty-four bits for each of its pixels. With N = 8192 and "
    "a downsampling factor of sixteen, fewer than three bits in a thousand survive. Fine strokes and small "
    "glyphs are the first details to disappear, which is why rendered text is a hard test for tokenizers.",
    "Residual quantization spends more codes on the same position instead of a larger codebook. The first "
    "code approximates the feature vector, the second code approximates what the first one missed, and so "
    "on for D depths. All depths draw from one shared codebook. The quantized vector is the sum of the chosen "
    "entries, so every extra depth refines the previous estimate rather than replacing it.",
    "The codebook is not trained by gradients in our tokenizer. Each entry follows an exponential moving "
    "average of the encoder outputs assigned to it, and entries that fall out of use are restarted from "
    "vectors of the current batch. This keeps every code alive even with sixteen thousand entries. A small "
    "commitment term pulls the encoder outputs toward their quantized values.",
    "Reconstruction quality is measured in two ways. The Frechet distance between features of real and "
    "reconstructed images summarises how natural the outputs look. For images that contain text, we read "
    "the reconstruction with an optical character recognizer and compare the result with the ground truth. "
    "A tokenizer that keeps every letter legible scores close to one; a blurry one scores close to zero.",
    "An autoregressive transformer predicts the code map one position at a time in raster order. Its input "
    "at each position is the sum of the embeddings of the codes already chosen there. The backbone is a "
    "stack of decoder blocks with rotary positions, root mean square normalisation and gated feed-forward "
    "layers. A class token at the start of the sequence selects what to draw.",
    "Predicting several depths at once needs more than one output head. We attach the heads to different "
    "layers of the backbone: the shallowest depth is read early and the deepest at the last layer. Before "
    "each head, the embedding of the code chosen by the previous head is added to the hidden state. The "
    "model therefore decides the depths of one position in order, inside a single forward pass.",
    "Generation costs as many forward passes as there are spatial positions, not positions times depths. A "
    "key and value cache holds the attention state of earlier positions, so each step processes one new "
    "token. Sampling at every head uses the same temperature and the same top-k and top-p filters. With "
    "classifier-free guidance the conditional and unconditional logits are mixed at every head.",
    "Classifier-free guidance trains one model for two tasks. During training the class token is replaced by "
    "a learned null token for one sample in ten. At sampling time the model runs on both tokens and the "
    "logits are pushed away from the unconditional prediction by a guidance scale. Larger scales trade "
    "diversity for fidelity, which shows up as higher inception scores and lower recall.",
    "Lower sampling temperature behaves for images of text much as it does for language models. Sharper "
    "distributions pick the most likely glyph at every step and the written words become more coherent. "
    "Too low a temperature repeats the same phrases line after line. We report the perplexity of the "
    "recognized text under a language model as a measure of how well the generated prose reads.",
    "Our rich-text data come from two sources. Wikipedia articles are cleaned of markup, split into chunks "
    "of at most one hundred words and drawn onto white pages with a fixed font. Research papers are "
    "rasterized page by page, and each crop keeps the words of the text layer that fall inside it. Both "
    "sets are stored as shards of encoded images next to their ground-truth text.",
    "Class-conditional experiments use an image folder with one directory per class. Every image is resized "
    "so that its shorter side matches the training resolution and then cropped at the centre. Ten crops "
    "of each training image are tokenized ahead of time, and one of them is drawn for every sample, which "
    "augments the data without running the tokenizer during transformer training.",
    "Evaluation follows the usual protocol for class-conditional generation. We draw fifty thousand samples, "
    "compute the Frechet inception distance against reference statistics of the validation images, and "
    "report inception score, precision and recall. Every number is traced to the configuration, the code "
    "version and the checkpoint that produced it, so a table can always be rebuilt.",
    "Depth helps the tokenizer more than it helps the generator. Eight depths reconstruct dense text almost "
    "perfectly, and the transformer trained on them reaches a lower cross-entropy. On natural images two "
    "depths already give the best sample quality, and more depths add codes that the model finds hard to "
    "predict. The right depth depends on how much fine detail the data hold.",
    "Several limitations remain. Recognizers trained on natural documents struggle with the small glyphs of "
    "low-resolution renders, so the text metrics are noisy for blurry images. Our models are far smaller "
    "than those of the original study. Training runs are short, and all results here are meant to exercise "
    "the pipeline end to end rather than to match published numbers.",
)
EQUATIONS = (
    "L = ||x - D(E(x))||^2 + beta * ||z - sg(q(z))||^2",
    "r_0 = z,  k_d = argmin_k ||r_(d-1) - e(k)||,  r_d = r_(d-1) - e(k_d)",
    "q_d(z) = e(k_1) + e(k_2) + ... + e(k_d)",
    "ICR = D * log2(N) / (24 * f^2)",
    "p(K) = prod_t prod_d p(k_(t,d) | k_(<t), k_(t,<d))",
    "logits = u + s * (c - u)",
    "rOCR = ROUGE-L(OCR(D(Q(E(x)))), text(x))",
    "e_k <- lambda * e_k + (1 - lambda) * mean(z : k(z) = k)",
)
SECTIONS = (
    "Introduction",
    "Background",
    "Residual Quantization",
    "The Tokenizer",
    "Autoregressive Modelling",
    "Depth-wise Prediction Heads",
    "Sampling",
    "Data",
    "Experiments",
    "Evaluation",
    "Ablations",
    "Limitations",
    "Conclusion",
)
TITLE_HEADS = ("Residual Codes", "Deeper Tokens", "Two-Dimensional Autoregression", "Stacked Quantizers")
TITLE_TAILS = ("for Legible Text in Images", "for Fine-Grained Image Generation", "for Rich-Text Images")
AUTHORS = ("A. Moreau", "B. Okafor", "C. Lindqvist", "D. Tanaka", "E. Novak", "F. Haddad", "G. Ferreira", "H. Iyer")
CAPTIONS = (
    "Figure 1: The tokenizer. The encoder maps an image to a grid of vectors; each vector is quantized into "
    "D residual codes from one shared codebook, and the decoder reads their sums.",
    "Figure 1: Codes of one position are predicted by heads attached to increasingly deep layers.",
)

PAGE = pymupdf.paper_rect("letter")  # 612 x 792 pt, the usual arXiv page
MARGIN = 72.0  # top and bottom; left and right are 72 (one column) or 54 (two columns)
BODY = ("tiro", 10.0)  # Times-Roman 10 pt: (base-14 font name, size in pt)
FIGURE_HEIGHT = 120.0  # pt, drawing only; the caption follows it
GRAY = (0.5, 0.5, 0.5)


def sentences(paragraph: str) -> list[str]:
    return re.split(r"(?<=\.)\s+", paragraph)


@dataclass(frozen=True)
class Block:
    kind: str  # "heading" | "paragraph" | "equation" | "figure"
    text: str  # the heading, paragraph or equation text; the caption of a figure


def paper_blocks(rng: random.Random) -> Iterator[Block]:
    """Sections without end (appendices after the named ones): the layout stops at its page limit."""
    names = ["Introduction"] + rng.sample(SECTIONS[1:], len(SECTIONS) - 1) + [f"Appendix {c}" for c in "ABCDEFGH"]
    sources = rng.sample(PARAGRAPHS, len(PARAGRAPHS))  # each source paragraph once before any repeats
    figure_at = rng.randrange(1, 3)
    drawn = 0
    for number, name in enumerate(names, start=1):
        yield Block("heading", f"{number}  {name}")
        for _ in range(rng.randint(1, 3)):
            source = sentences(sources[drawn % len(sources)])
            drawn += 1
            start = rng.randrange(0, len(source) - 2)
            yield Block("paragraph", " ".join(source[start : start + rng.randint(3, 5)]))
            if rng.random() < 0.35:
                yield Block("equation", rng.choice(EQUATIONS))
        if number == figure_at:
            yield Block("figure", rng.choice(CAPTIONS))


@lru_cache(maxsize=None)
def font(name: str) -> pymupdf.Font:
    return pymupdf.Font(name)


@lru_cache(maxsize=None)
def char_width(char: str, name: str) -> float:
    """Advance width at 1 pt; base-14 fonts have no kerning, so widths add up (and caching is fast)."""
    return font(name).text_length(char, 1.0)


def text_width(text: str, name: str, size: float) -> float:
    return size * sum(char_width(char, name) for char in text)


def wrap(text: str, name: str, size: float, width: float) -> list[str]:
    """Greedy word wrap at the font's advance widths."""
    space = text_width(" ", name, size)
    lines: list[str] = []
    current: list[str] = []
    current_width = 0.0
    for word in text.split():
        word_width = text_width(word, name, size)
        if current and current_width + space + word_width > width:
            lines.append(" ".join(current))
            current, current_width = [word], word_width
        else:
            current_width += word_width + (space if current else 0.0)
            current.append(word)
    return lines + [" ".join(current)] if current else lines


class PaperFull(Exception):
    """The layout reached the end of the paper's last page."""


class ColumnFlow:
    """Line-by-line layout: full-width front matter, then one or two columns, over a fixed number of pages.

    A figure that does not fit floats to the top of the next column, as in LaTeX.
    """

    def __init__(self, doc: pymupdf.Document, n_pages: int, n_columns: int, stamp: str):
        self.doc, self.n_pages, self.stamp = doc, n_pages, stamp
        side, gutter = (54.0, 18.0) if n_columns == 2 else (72.0, 0.0)
        width = (PAGE.width - 2 * side - (n_columns - 1) * gutter) / n_columns
        lefts = [side + c * (width + gutter) for c in range(n_columns)]
        self.body = [pymupdf.Rect(x, MARGIN, x + width, PAGE.height - MARGIN) for x in lefts]
        self.equation_number = 0
        self.floating_caption: str | None = None
        self.writer: pymupdf.TextWriter | None = None  # this page's text, written in one go
        self.new_page()

    def new_page(self) -> None:
        if len(self.doc) == self.n_pages:
            raise PaperFull
        self.finish_page()
        self.page = self.doc.new_page(width=PAGE.width, height=PAGE.height)
        self.writer = pymupdf.TextWriter(self.page.rect)
        if len(self.doc) == 1:  # arXiv's stamp: gray, reading upwards along the left margin
            self.page.insert_text((36, 560), self.stamp, fontname="tiro", fontsize=18, rotate=90, color=GRAY)
        self.columns, self.column, self.y = list(self.body), 0, self.body[0].y0
        self.place_floating_figure()

    def finish_page(self) -> None:
        if self.writer is not None:
            self.put((PAGE.width / 2 - 3, PAGE.height - 40), str(len(self.doc)), "tiro", 10)  # page number
            self.writer.write_text(self.page)
            self.writer = None

    def put(self, origin: tuple[float, float], text: str, name: str, size: float) -> None:
        self.writer.append(origin, text, font=font(name), fontsize=size)

    def full_width(self) -> None:
        """Lay out across all columns from here (title, abstract)."""
        self.columns, self.column = [pymupdf.Rect(self.body[0].x0, self.y, self.body[-1].x1, self.body[0].y1)], 0

    def start_columns(self) -> None:
        """Body columns from the current height down."""
        self.columns, self.column = [pymupdf.Rect(c.x0, self.y, c.x1, c.y1) for c in self.body], 0

    @property
    def rect(self) -> pymupdf.Rect:
        return self.columns[self.column]

    def advance_column(self) -> None:
        if self.column + 1 < len(self.columns):
            self.column += 1
            self.y = self.rect.y0
            self.place_floating_figure()
        else:
            self.new_page()

    def reserve(self, height: float) -> float:
        """Top y of a `height`-tall slot in the flow, moving on to the next column or page when needed."""
        if self.y + height > self.rect.y1:
            self.advance_column()
        top = self.y
        self.y += height
        return top

    def keep(self, height: float) -> None:
        """Start the next column unless `height` fits here (a heading stays with its first lines)."""
        if self.y + height > self.rect.y1:
            self.advance_column()

    def space(self, height: float) -> None:
        self.y = min(self.y + height, self.rect.y1)

    def text(self, text: str, name: str, size: float, centred: bool = False, indent: float = 0.0) -> None:
        for line in wrap(text, name, size, self.rect.width - 2 * indent):
            top = self.reserve(size * 1.25)
            left = self.rect.x0 + ((self.rect.width - text_width(line, name, size)) / 2 if centred else indent)
            self.put((left, top + size), line, name, size)

    def equation(self, text: str) -> None:
        self.equation_number += 1
        label = f"({self.equation_number})"
        room = self.rect.width - 2 * text_width(label + "  ", "tiro", BODY[1])
        size = min(BODY[1], BODY[1] * room / text_width(text, "tiit", BODY[1]))  # shrink long ones to fit
        top = self.reserve(BODY[1] * 2.2)
        baseline = top + BODY[1] * 1.4
        self.put((self.rect.x0 + (self.rect.width - text_width(text, "tiit", size)) / 2, baseline), text, "tiit", size)
        self.put((self.rect.x1 - text_width(label, "tiro", BODY[1]), baseline), label, "tiro", BODY[1])

    def figure_height(self, caption: str) -> float:
        return FIGURE_HEIGHT + len(wrap(caption, "tiro", 9.0, self.rect.width)) * 9.0 * 1.25

    def figure(self, caption: str) -> None:
        if self.y + self.figure_height(caption) > self.rect.y1:
            self.floating_caption = caption
        else:
            self.draw_figure(caption)

    def place_floating_figure(self) -> None:
        if self.floating_caption is not None:
            caption, self.floating_caption = self.floating_caption, None
            self.draw_figure(caption)

    def draw_figure(self, caption: str) -> None:
        top = self.reserve(FIGURE_HEIGHT)
        drawing = pymupdf.Rect(self.rect.x0, top, self.rect.x1, top + FIGURE_HEIGHT - 10)
        draw_pipeline_figure(self.page, drawing, self.put)
        self.text(caption, "tiro", 9.0)
        self.space(8)


def draw_pipeline_figure(page: pymupdf.Page, box: pymupdf.Rect, put: Callable[..., None]) -> None:
    """Encoder -> residual code stack -> decoder, with an image grid on each side; labels go through `put`."""
    shape = page.new_shape()
    unit = min(box.width / 10, box.height / 3.2)  # the drawing is 10 x 3.2 units, centred in the box
    box = pymupdf.Rect(box.x0 + (box.width - 10 * unit) / 2, box.y0, box.x1, box.y1)
    mid = (box.y0 + box.y1) / 2
    for i, (left, label) in enumerate(((0.0, "x"), (8.6, "x'"))):
        grid = pymupdf.Rect(box.x0 + left * unit, mid - 0.7 * unit, box.x0 + (left + 1.4) * unit, mid + 0.7 * unit)
        shape.draw_rect(grid)
        for k in (1, 2):
            shape.draw_line((grid.x0 + k * grid.width / 3, grid.y0), (grid.x0 + k * grid.width / 3, grid.y1))
            shape.draw_line((grid.x0, grid.y0 + k * grid.height / 3), (grid.x1, grid.y0 + k * grid.height / 3))
        shape.finish(color=(0, 0, 0), fill=(0.85, 0.9, 1.0) if i == 0 else (1.0, 0.9, 0.85), width=0.8)
        put((grid.x0 + grid.width / 2 - 3, grid.y1 + 12), label, "tiit", 9)
    for left, label in ((2.0, "E"), (6.6, "D")):  # encoder and decoder as trapezoid-like boxes
        block = pymupdf.Rect(box.x0 + left * unit, mid - 0.9 * unit, box.x0 + (left + 1.4) * unit, mid + 0.9 * unit)
        shape.draw_rect(block, radius=0.15)
        shape.finish(color=(0, 0, 0), fill=(0.92, 0.92, 0.92), width=0.8)
        put((block.x0 + block.width / 2 - 3, mid + 3), label, "tibo", 10)
    for depth in range(4):  # the D residual codes of one position, shrinking with depth
        radius = unit * (0.38 - 0.06 * depth)
        shape.draw_circle((box.x0 + 5.0 * unit, mid - 1.2 * unit + depth * 0.8 * unit), radius)
        shape.finish(color=(0, 0, 0), fill=(1.0, 1.0 - 0.2 * depth, 0.6), width=0.6)
    for x0, x1 in ((1.5, 1.95), (3.45, 4.5), (5.5, 6.55), (8.05, 8.55)):  # arrows between stages
        start, end = pymupdf.Point(box.x0 + x0 * unit, mid), pymupdf.Point(box.x0 + x1 * unit, mid)
        shape.draw_line(start, end)
        shape.draw_polyline([end + (-4, -3), end, end + (-4, 3)])
        shape.finish(color=(0, 0, 0), width=0.8)
    shape.commit()
    put((box.x0 + 4.35 * unit, box.y1 + 6), "codes, d = 1..D", "tiit", 8)


def write_paper(path: Path, rng: random.Random, paper_id: str, n_pages: int, n_columns: int) -> None:
    doc = pymupdf.open()
    flow = ColumnFlow(doc, n_pages, n_columns, stamp=f"arXiv:{paper_id}v1  [cs.CV]  7 Oct 2024")
    title = f"{rng.choice(TITLE_HEADS)} {rng.choice(TITLE_TAILS)}"
    authors = ", ".join(rng.sample(AUTHORS, rng.randint(2, 4)))
    first, second = rng.sample(PARAGRAPHS, 2)
    abstract = " ".join(sentences(first)[:3] + sentences(second)[:2])
    flow.full_width()
    flow.text(title, "tibo", 17, centred=True)
    flow.space(6)
    flow.text(authors, "tiro", 11, centred=True)
    flow.text("Institute for Visual Tokens", "tiit", 10, centred=True)
    flow.space(14)
    flow.text("Abstract", "tibo", 11, centred=True)
    flow.text(abstract, "tiro", 9.5, indent=36)
    flow.space(14)
    flow.start_columns()
    try:
        for block in paper_blocks(rng):
            if block.kind == "heading":
                flow.space(6)
                flow.keep(48)
                flow.text(block.text, "tibo", 12)
                flow.space(2)
            elif block.kind == "paragraph":
                flow.text(block.text, *BODY)
                flow.space(4)
            elif block.kind == "equation":
                flow.equation(block.text)
            else:
                flow.figure(block.text)
    except PaperFull:
        pass
    flow.finish_page()
    doc.set_metadata({})  # no producer, no dates: the bytes depend on the content only
    with atomic_path(path) as tmp:
        doc.save(tmp, garbage=3, deflate=True, no_new_id=True)
    doc.close()


@dataclass
class DemoPdfsConfig:
    """`demo.pdfs`: how many demo papers, and the seed of their deterministic sentence choice."""

    count: int = 6
    seed: int = 0


def write_demo_pdfs(out_dir: Path, n: int = 6, seed: int = 0) -> list[Path]:
    """Write `n` arXiv-like papers named `2410.9NNNNv1.pdf` (2-4 pages, every second one two-column)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        paper_id = f"2410.{90001 + i:05d}"
        path = out_dir / f"{paper_id}v1.pdf"
        write_paper(path, rng, paper_id, n_pages=2 + i % 3, n_columns=1 + i % 2)
        paths.append(path)
    return paths
