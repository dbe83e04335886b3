"""PPL-OCR language models: the nltk n-gram model fitted on our text, and a Hugging Face causal LM from a folder."""

from __future__ import annotations

import math
import random

import pytest
import torch

from dnd.data import shards
from dnd.data.wiki import chunk_words, clean_wikitext, iter_pages
from dnd.metrics.ppl import (
    HFCausalLM,
    LanguageModelError,
    LMConfig,
    NGramLM,
    count_empty,
    dataset_texts,
    fit_ngram,
    fit_ngram_on_dataset,
    load_ngram,
    make_language_model,
    tokenize,
)
from testdata import DEMO_DUMP, save_tiny_causal_lm

CORPUS = [
    "The cat sat on the mat.",
    "The dog sat on the rug.",
    "A cat and a dog sat on the mat together.",
    "The bird flew over the house, and the cat watched it.",
    "The dog slept on the rug near the door.",
    "Every morning the cat sat on the mat in the sun.",
]


def shuffled(text: str, seed: int = 0) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def garbled(text: str, seed: int = 0) -> str:
    """OCR-like noise: a third of the letters replaced by random letters."""
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") if c.isalpha() and rng.random() < 0.33 else c for c in text)


@pytest.fixture(scope="module")
def prose_chunks() -> list[str]:
    """100-word chunks of the demo Wikipedia dump: the text the Text-Image pages carry."""
    if not DEMO_DUMP.exists():
        pytest.skip(f"the demo dump {DEMO_DUMP} is absent")
    return [chunk for page in iter_pages(DEMO_DUMP) for chunk in chunk_words(clean_wikitext(page.wikitext), 100)]


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Don't STOP, the paper's 2nd point!") == ["don't", "stop", ",", "the", "paper's", "2nd", "point", "!"]
    assert tokenize("   ") == []


def test_training_sentence_beats_its_shuffled_words():
    model = fit_ngram(CORPUS, order=3, unk_cutoff=2)
    sentence = "Every morning the cat sat on the mat in the sun."
    [ordered, scrambled] = model.perplexity([sentence, shuffled(sentence)])
    assert ordered < scrambled
    # Per text: exp(mean NLL over its words and </s>).
    nll = model.token_nll(sentence)
    assert len(nll) == len(tokenize(sentence)) + 1
    assert ordered == pytest.approx(math.exp(sum(nll) / len(nll)))


def test_unseen_words_have_finite_perplexity_and_cost_by_spelling():
    # unk_cutoff=1: no training word becomes <UNK>, the add-one floor still gives unknowns some mass.
    for cutoff in (1, 2):
        model = fit_ngram(CORPUS, order=3, unk_cutoff=cutoff)
        [known, unseen, gibberish] = model.perplexity(
            ["the cat sat on the mat .", "the zebra sat on the mat .", "the qxzvkj sat on the mat ."]
        )
        assert all(math.isfinite(value) for value in (known, unseen, gibberish))
        assert known < unseen < gibberish  # an unknown word costs its letters; an un-English one costs more


def test_empty_texts_are_none_and_left_out_of_the_corpus_score():
    model = fit_ngram(CORPUS)
    texts = ["the cat sat on the mat .", "", "  ", "the dog sat on the rug ."]
    scores = model.perplexity(texts)
    assert scores[1] is None and scores[2] is None
    assert count_empty(texts) == 2
    nll = model.token_nll(texts[0]) + model.token_nll(texts[3])
    assert model.corpus_perplexity(texts) == pytest.approx(math.exp(sum(nll) / len(nll)))
    with pytest.raises(ValueError, match="every text is empty"):
        model.corpus_perplexity(["", " "])


def test_real_prose_beats_shuffled_and_ocr_noise(prose_chunks):
    train, held_out = prose_chunks[:-20], prose_chunks[-20:]
    model = fit_ngram(train, order=3, unk_cutoff=2)
    real = model.corpus_perplexity(held_out)
    assert real < model.corpus_perplexity([shuffled(text, i) for i, text in enumerate(held_out)])
    noisy = [garbled(text, i) for i, text in enumerate(held_out)]
    assert 10 * real < model.corpus_perplexity(noisy)  # gibberish must not hide behind a single <UNK> token
    assert model.oov_rate(held_out) < model.oov_rate(noisy)


def test_fit_on_dataset_save_load_round_trip(tmp_path, prose_chunks):
    texts = prose_chunks[:40]
    records = [{"id": f"t-{i}", "png": b"", "text": text, "title": "T", "split": "train"} for i, text in enumerate(texts)]
    records.append({"id": "blank", "png": b"", "text": "", "title": "T", "split": "train"})
    shards.write_shard(tmp_path / "text_image" / "train" / shards.shard_name(0, 1), records, shards.image_schema())

    assert dataset_texts(tmp_path / "text_image") == texts
    words = sum(len(text.split()) for text in texts)
    assert dataset_texts(tmp_path / "text_image", max_words=words // 4 + 1) == texts[::4]  # evenly spaced

    cfg = LMConfig(backend="ngram", max_train_words=None)
    fitted = fit_ngram_on_dataset(cfg, tmp_path / "text_image", tmp_path / "lm" / "ngram.pkl")
    loaded = make_language_model(cfg, tmp_path / "lm" / "ngram.pkl")
    assert isinstance(loaded, NGramLM) and loaded.name == "ngram3"
    probe = [prose_chunks[-1], shuffled(prose_chunks[-1]), "zzq xkcd"]
    assert loaded.perplexity(probe) == fitted.perplexity(probe)
    assert load_ngram(tmp_path / "lm" / "ngram.pkl").train_words == fitted.train_words

    with pytest.raises(LanguageModelError, match="fitted model file"):
        make_language_model(cfg, tmp_path / "missing.pkl")
    with pytest.raises(LanguageModelError, match="setting backend"):
        make_language_model(LMConfig(backend="bigram"))


# ----------------------------------------------------------------------------------------------------
# Hugging Face backend, on a tiny GPT-2 and a word-level tokenizer built here (nothing downloaded)


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    pytest.importorskip("transformers")
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-gpt2"), CORPUS)


def manual_perplexity(lm: HFCausalLM, text: str) -> float:
    """exp(mean NLL) of one text, unbatched and unpadded."""
    ids = torch.tensor([lm.prefix + lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, :-1]
    return math.exp(torch.nn.functional.cross_entropy(logits.float(), ids[0, 1:]).item())


def test_hf_causal_lm_matches_an_unbatched_computation(tiny_causal_lm):
    lm = make_language_model(LMConfig(backend="hf", hf_path=str(tiny_causal_lm), batch_size=2, device="cpu"))
    assert isinstance(lm, HFCausalLM) and lm.name == tiny_causal_lm.name
    texts = [CORPUS[0], "", CORPUS[3], "mat", CORPUS[1], shuffled(CORPUS[0])]  # lengths differ: padding is exercised
    scores = lm.perplexity(texts)
    assert scores[1] is None
    for text, score in zip(texts, scores):
        if text:
            assert score == pytest.approx(manual_perplexity(lm, text), rel=1e-4)
    assert scores[0] < scores[5]  # the sentence it was trained on beats its shuffled words

    scored = [(math.log(manual_perplexity(lm, t)), len(lm._encode(t)) - 1) for t in texts if t]
    expected = math.exp(sum(log_ppl * n for log_ppl, n in scored) / sum(n for _, n in scored))
    assert lm.corpus_perplexity(texts) == pytest.approx(expected, rel=1e-4)


def test_hf_causal_lm_needs_an_existing_folder(tmp_path):
    with pytest.raises(LanguageModelError, match="hf_path"):
        make_language_model(LMConfig(backend="hf", hf_path=str(tmp_path / "Qwen2.5-72B")))
    with pytest.raises(LanguageModelError, match="hf_path"):
        make_language_model(LMConfig(backend="hf"))
