"""Language models for PPL-OCR: the perplexity of the text read back from generated images.

The paper scores OCR output with Qwen2.5-72B; two backends stand behind one interface:

- `hf` (`HFCausalLM`): any Hugging Face causal LM from a local folder (Qwen2.5-72B on a GPU node, bf16,
  optionally spread over GPUs with `device_map`); token-level perplexity, nothing is downloaded.
- `ngram` (`NGramLM`): a word-level trigram model fitted on the Text-Image training text with `nltk.lm`,
  the offline stand-in that runs anywhere. It is a cached DAG output: `fit_ngram` once, `save`, then
  `load_ngram` in every evaluation.

Choice of smoothing for the n-gram model (trigrams, closed vocabulary, fitted on 490k words of Wikipedia
prose, 1 CPU core): interpolated Witten-Bell, ~0.1 ms per token, held-out perplexity 424 and 1811 for
the same words shuffled. Laplace is as fast but barely tells the two apart (9223 vs 15209); nltk's Kneser-Ney
recounts continuations over every n-gram type on each call (65 ms per token at that size, growing
with the corpus), far too slow for 250 pages per model. nltk's Witten-Bell is used with two changes:
its per-context interpolation weight is memoised (the counts are frozen after fitting) and its unigram
floor is add-one smoothed, so `<UNK>` keeps some mass even when no training word fell below the cutoff.

Unknown words. A closed-vocabulary model scores every unknown word as the single token `<UNK>`, which
makes OCR gibberish look fluent (random letter strings scored a perplexity of 11, real prose 380).
`NGramLM` is therefore open-vocabulary: an unknown word costs P(<UNK> | context) times the probability
of its spelling under a character n-gram model fitted on the training word types, so a page of
non-words is charged for every letter (same setting: real prose 1226, shuffled 4936, a third of the
letters replaced 8e8; fitting took 15 s and 0.4 GB, scoring 35 µs per token).

Tokenisation (`tokenize`): lowercase; a word is a run of letters, digits or `_`, inner apostrophes kept
("don't", "paper's"); every other non-space character is a token of its own (punctuation). Each text
(one image) is one sequence padded with `<s>` / `</s>`; `</s>` is scored, so a text of n words has n + 1
scored tokens.

Empty texts (OCR read nothing) have no perplexity: `perplexity` returns None for them and
`corpus_perplexity` leaves them out; callers count them (`count_empty`) and report the count beside
the score.
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from nltk.lm import Vocabulary
from nltk.lm.models import InterpolatedLanguageModel
from nltk.lm.preprocessing import padded_everygram_pipeline
from nltk.lm.smoothing import WittenBell
from nltk.util import ngrams

from dnd.atomic import atomic_path
from dnd.data.shards import iter_records

TOKEN_PATTERN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
NGRAM_FORMAT = 1  # version of the pickled payload written by `NGramLM.save`


class LanguageModelError(RuntimeError):
    """A language model cannot be built or loaded (missing folder, missing package, bad setting)."""


class LanguageModel(Protocol):
    name: str

    def perplexity(self, texts: list[str]) -> list[float | None]:
        """Perplexity of each text; None for a text with nothing to score."""
        ...

    def corpus_perplexity(self, texts: list[str]) -> float:
        """exp(total NLL / total scored tokens) over the non-empty texts."""
        ...

    def scores(self, texts: list[str]) -> list[tuple[float, int] | None]:
        """(total NLL, scored tokens) of each text; None for a text with nothing to score."""
        ...


@dataclass
class LMConfig:
    backend: str = "ngram"  # ngram | hf
    # ngram: fitted on the `text` column of the Text-Image train split
    order: int = 3  # word n-gram order
    unk_cutoff: int = 2  # words seen fewer times in training become <UNK> (then spelled by the character model)
    spelling_order: int = 4  # character n-gram order of the spelling model for unknown words
    # nltk keeps its counts in Python dicts (~30 s and ~0.8 GB per million words): the paper's 240M words
    # would not fit, so evenly spaced training texts up to about this many words are used; None = all
    max_train_words: int | None = 2_000_000
    # hf: a causal LM in a local folder (e.g. a downloaded Qwen2.5-72B)
    hf_path: str | None = None  # folder holding config.json, the weights and the tokenizer files
    batch_size: int = 8  # texts per forward pass
    max_length: int = 512  # tokens per text, longer texts are truncated (a 100-word page is ~150)
    device: str | None = None  # None = cuda when available, else cpu; ignored when device_map is set
    device_map: str | None = None  # e.g. "auto" to spread a large model over all GPUs (needs `accelerate`)
    dtype: str | None = None  # torch dtype name; None = bfloat16 on GPU, float32 on CPU


def count_empty(texts: Sequence[str]) -> int:
    """How many texts have nothing to score (empty or whitespace only): report it beside the perplexity."""
    return sum(1 for text in texts if not text.strip())


def corpus_from_scores(nll_and_tokens: Iterable[tuple[float, int]]) -> float:
    total_nll, total_tokens = 0.0, 0
    for nll, tokens in nll_and_tokens:
        total_nll += nll
        total_tokens += tokens
    if total_tokens == 0:
        raise ValueError("no text to score: every text is empty")
    return math.exp(total_nll / total_tokens)


# ----------------------------------------------------------------------------------------------------
# Word n-gram model (nltk)


def tokenize(text: str) -> list[str]:
    return TOKEN_PATTERN.findall(text.lower())


class _WittenBell(WittenBell):
    """nltk's Witten-Bell smoothing with a memoised interpolation weight and an add-one unigram floor."""

    def __init__(self, vocabulary, counter, **kwargs):
        super().__init__(vocabulary, counter, **kwargs)
        self._gammas: dict[tuple[str, ...], float] = {}

    def _gamma(self, context: tuple[str, ...]) -> float:
        # nltk counts the context's distinct followers on every call: O(followers), thousands for "of the".
        if context not in self._gammas:
            self._gammas[context] = super()._gamma(context)
        return self._gammas[context]

    def unigram_score(self, word: str) -> float:
        unigrams = self.counts.unigrams
        return (unigrams[word] + 1) / (unigrams.N() + len(self.vocab))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_gammas": {}}


def _fit_witten_bell(sequences: list[list[str]], order: int, unk_cutoff: int) -> InterpolatedLanguageModel:
    model = InterpolatedLanguageModel(_WittenBell, order, vocabulary=Vocabulary(unk_cutoff=unk_cutoff))
    train, vocabulary_text = padded_everygram_pipeline(order, sequences)
    model.fit(train, vocabulary_text)
    return model


def _sequence_nll(model: InterpolatedLanguageModel, tokens: list[str]) -> list[float]:
    """-ln P of each token and of the closing </s>, given the previous order-1 tokens."""
    padded = ["<s>"] * (model.order - 1) + tokens + ["</s>"]  # one </s>: nltk's second one would score ~1 for free
    return [-math.log(model.score(gram[-1], gram[:-1])) for gram in ngrams(padded, model.order)]


class NGramLM:
    """Open-vocabulary word n-gram model: Witten-Bell word trigrams, unknown words spelled by characters."""

    def __init__(self, words: InterpolatedLanguageModel, spelling: InterpolatedLanguageModel, train_words: int):
        self.words, self.spelling, self.train_words = words, spelling, train_words
        self.name = f"ngram{words.order}"

    def token_nll(self, text: str) -> list[float]:
        """-ln P of each scored token of `text` (its words and the closing </s>); [] for an empty text."""
        tokens = tokenize(text)
        if not tokens:
            return []
        nll = _sequence_nll(self.words, tokens)
        for position, token in enumerate(tokens):
            if token not in self.words.vocab:  # P(word) = P(<UNK> | context) · P(spelling)
                nll[position] += sum(_sequence_nll(self.spelling, list(token)))
        return nll

    def oov_rate(self, texts: list[str]) -> float:
        """Share of word tokens outside the vocabulary (scored through the spelling model)."""
        tokens = [token for text in texts for token in tokenize(text)]
        return sum(token not in self.words.vocab for token in tokens) / max(1, len(tokens))

    def _scores(self, texts: list[str]) -> list[tuple[float, int] | None]:
        out = []
        for text in texts:
            nll = self.token_nll(text)
            out.append((math.fsum(nll), len(nll)) if nll else None)
        return out

    def scores(self, texts: list[str]) -> list[tuple[float, int] | None]:
        return self._scores(texts)

    def perplexity(self, texts: list[str]) -> list[float | None]:
        return [None if score is None else math.exp(score[0] / score[1]) for score in self._scores(texts)]

    def corpus_perplexity(self, texts: list[str]) -> float:
        return corpus_from_scores(score for score in self._scores(texts) if score is not None)

    def save(self, path: Path) -> None:
        payload = {"format": NGRAM_FORMAT, "words": self.words, "spelling": self.spelling, "train_words": self.train_words}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)


def fit_ngram(texts: Iterable[str], order: int = 3, unk_cutoff: int = 2, spelling_order: int = 4) -> NGramLM:
    """Fit the word model on `texts` and the spelling model on their distinct word types."""
    sequences = [tokens for tokens in map(tokenize, texts) if tokens]
    if not sequences:
        raise ValueError("cannot fit an n-gram model on no text")
    word_types = sorted({token for tokens in sequences for token in tokens})
    words = _fit_witten_bell(sequences, order, unk_cutoff)
    spelling = _fit_witten_bell([list(word) for word in word_types], spelling_order, 1)
    return NGramLM(words, spelling, train_words=sum(map(len, sequences)))


def load_ngram(path: Path) -> NGramLM:
    """Load a model written by `NGramLM.save` (a pickle: load only files this pipeline wrote)."""
    with open(path, "rb") as f:
        payload = pickle.load(f)
    if payload.get("format") != NGRAM_FORMAT:
        raise LanguageModelError(f"{path}: n-gram model format {payload.get('format')}, expected {NGRAM_FORMAT}; refit it")
    return NGramLM(payload["words"], payload["spelling"], payload["train_words"])


def dataset_texts(dataset: Path, split: str = "train", max_words: int | None = None) -> list[str]:
    """The non-empty `text` column of one split, thinned to evenly spaced texts of about `max_words` words."""
    texts = [record["text"] for record in iter_records(Path(dataset), split, columns=["text"]) if record["text"].strip()]
    total = sum(len(text.split()) for text in texts)
    if max_words is None or total <= max_words:
        return texts
    stride = math.ceil(total / max_words)  # every stride-th text: the whole split's topics, not its first articles
    return texts[::stride]


def fit_ngram_on_dataset(cfg: LMConfig, dataset: Path, out: Path) -> NGramLM:
    """Fit the n-gram model of `cfg` on the train split of `dataset` (Text-Image) and save it to `out`."""
    model = fit_ngram(dataset_texts(dataset, "train", cfg.max_train_words), cfg.order, cfg.unk_cutoff, cfg.spelling_order)
    model.save(out)
    return model


# ----------------------------------------------------------------------------------------------------
# Hugging Face causal LM


class HFCausalLM:
    """A causal LM from a local folder; each text's tokens are scored after a BOS (or EOS) prefix token.

    The prefix makes the first word scored too; models without either token (rare) leave the first
    token unscored. Texts are batched with right padding and an attention mask; padded positions
    carry no loss.
    """

    def __init__(self, path: str | Path, batch_size: int = 8, max_length: int = 512, device: str | None = None,
                 device_map: str | None = None, dtype: str | None = None):
        import torch

        path = Path(path)
        if not (path / "config.json").is_file():
            raise LanguageModelError(
                f"language model folder {str(path)!r} (setting hf_path) has no config.json: "
                "download the model there first (nothing is fetched at run time)"
            )
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as error:
            raise LanguageModelError("language model backend 'hf' needs the `transformers` package") from error
        if device_map is not None:
            try:
                import accelerate  # noqa: F401  (transformers dispatches device_map through it)
            except ImportError as error:
                raise LanguageModelError(f"setting device_map={device_map!r} needs the `accelerate` package") from error

        on_gpu = torch.cuda.is_available() if device is None else device.startswith("cuda")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if on_gpu else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch_dtype, device_map=device_map)
        if device_map is None:
            self.model.to(device or ("cuda" if on_gpu else "cpu"))
        self.model.eval()
        self.name = path.name
        self.batch_size, self.max_length = batch_size, max_length
        prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        self.prefix = [] if prefix is None else [prefix]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (prefix or 0)

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return (self.prefix + ids)[: self.max_length]

    def _batch_scores(self, sequences: list[list[int]]) -> list[tuple[float, int]]:
        import torch
        import torch.nn.functional as F

        device = self.model.device
        width = max(map(len, sequences))
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        targets = ids[:, 1:]  # position t predicts token t + 1
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")  # (B, T-1)
        scored = mask[:, 1:].float()
        return list(zip((nll * scored).sum(1).tolist(), scored.sum(1).long().tolist()))

    def _scores(self, texts: list[str]) -> list[tuple[float, int] | None]:
        encoded = [self._encode(text) if text.strip() else [] for text in texts]
        scorable = [i for i, ids in enumerate(encoded) if len(ids) >= 2]
        scorable.sort(key=lambda i: len(encoded[i]))  # similar lengths per batch: less padding
        out: list[tuple[float, int] | None] = [None] * len(texts)
        for start in range(0, len(scorable), self.batch_size):
            batch = scorable[start : start + self.batch_size]
            for index, score in zip(batch, self._batch_scores([encoded[i] for i in batch])):
                out[index] = score
        return out

    def scores(self, texts: list[str]) -> list[tuple[float, int] | None]:
        return self._scores(texts)

    def perplexity(self, texts: list[str]) -> list[float | None]:
        return [None if score is None else math.exp(score[0] / score[1]) for score in self._scores(texts)]

    def corpus_perplexity(self, texts: list[str]) -> float:
        return corpus_from_scores(score for score in self._scores(texts) if score is not None)


# ----------------------------------------------------------------------------------------------------


def make_language_model(cfg: LMConfig, ngram_model: Path | None = None) -> LanguageModel:
    """The configured backend; `ngram_model` is the file written by `fit_ngram_on_dataset`."""
    if cfg.backend == "ngram":
        if ngram_model is None or not Path(ngram_model).is_file():
            raise LanguageModelError(f"language model backend 'ngram' needs a fitted model file, got {ngram_model}")
        return load_ngram(Path(ngram_model))
    if cfg.backend == "hf":
        if not cfg.hf_path:
            raise LanguageModelError("language model backend 'hf' needs the setting hf_path (a local model folder)")
        return HFCausalLM(cfg.hf_path, cfg.batch_size, cfg.max_length, cfg.device, cfg.device_map, cfg.dtype)
    raise LanguageModelError(f"unknown language model backend {cfg.backend!r} (setting backend): choose ngram or hf")

