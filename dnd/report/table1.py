"""Table 1: reconstruction of the tokenizers (1a: the class-labelled set; 1b: rOCR on Text256, Text512,
arXiv512), one row per tokenizer or VAE, `n/a` where a metric cannot run and a `note` saying why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from dnd.config import ConfigError
from dnd.report.common import NA, fmt, join_notes, load_metrics, plot_bars, stack_images, write_csv

TESTSET_ORDER = ("text256", "text512", "arxiv512")  # the paper's column order
RFID_NA = "rFID n/a: no Inception weights configured (metrics.inception_weights; the metrics JSON says more)"


def _continuous_note(m: dict[str, Any]) -> str:
    """What a pretrained continuous VAE's row is (dnd.stages.vae_recon): no codebook, so no code usage."""
    if m.get("kind") != "continuous_vae":
        return ""
    return f"continuous VAE (f{m['downsample_factor']}, {m['latent_channels']} latent channels): no codebook, no code usage"


def _rfid_note(m: dict[str, Any]) -> str:
    if m.get("rfid") is not None:
        return ""
    reason = m.get("rfid_na_reason", "")
    return RFID_NA if not reason or "inception_weights" in reason else f"rFID n/a: {reason}"


def _classifier_note(m: dict[str, Any]) -> str:
    if m.get("classifier_acc") is not None:
        return ""
    return f"classifier accuracy n/a: {m.get('classifier_acc_na_reason') or 'not measured by this evaluation'}"


def _interval(interval: list[float] | None, digits: int) -> str:
    return NA if interval is None else f"[{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def table1a(metrics: list[Path], notes: dict[str, str]) -> pd.DataFrame:
    """Rows: tokenizers on the class-labelled test set; rFID, L2, the demo classifier's accuracy on the
    reconstructions (and on the same original images, its ceiling), code usage (mean and per depth). L2 and the
    accuracy carry 95 % bootstrap intervals over the `n_images` test images."""
    rows = []
    for m in load_metrics(metrics):
        usage = m.get("code_usage") or []
        rows.append({
            "tokenizer": m["tokenizer"],
            "testset": m["testset"],
            "depth": m.get("depth", NA),
            "codebook_size": m.get("codebook_size", NA),
            "rFID": fmt(m.get("rfid"), 2),
            "rFID_95ci": _interval(m.get("rfid_interval"), 2),
            "L2": fmt(m["l2"]),
            "L2_95ci": _interval(m.get("l2_interval"), 4),
            "classifier_acc": fmt(m.get("classifier_acc"), 3),
            "classifier_acc_95ci": _interval(m.get("classifier_acc_interval"), 3),
            "classifier_acc_originals": fmt(m.get("classifier_acc_originals"), 3),
            "code_usage": fmt(sum(usage) / len(usage) if usage else None, 3),
            "code_usage_per_depth": "/".join(f"{u:.2f}" for u in usage) or NA,
            "code_entropy_bits_per_depth": "/".join(f"{e:.2f}" for e in m.get("code_entropy_bits", [])) or NA,
            "n_images": m["n_images"],
            # rFID's reference is the test images themselves (originals vs their reconstructions)
            "n_reference": m.get("rfid_n_reference", NA),
            "paper_protocol": m.get("rfid_paper_protocol", NA),
            "note": join_notes(notes.get(m["tokenizer"], ""), _continuous_note(m), _rfid_note(m), _classifier_note(m)),
        })
    return pd.DataFrame(rows)


def table1b(metrics: list[Path], columns: dict[str, str], notes: dict[str, str]) -> pd.DataFrame:
    """Rows: tokenizers; one rOCR column per test set (`columns`: test set → column name)."""
    by_row: dict[str, dict[str, Any]] = {}
    for m in load_metrics(metrics):
        row = by_row.setdefault(m["tokenizer"], {"tokenizer": m["tokenizer"]})
        row[columns[m["testset"]]] = fmt(m.get("rocr"), 3)
        row.setdefault("ocr_backend", m.get("ocr_backend", NA))
        row.setdefault("n_images", {})[columns[m["testset"]]] = m["n_images"]
        row["auto_note"] = _continuous_note(m)
        if m.get("rocr_reference", "").startswith("the OCR of the original"):
            row.setdefault("reference_notes", []).append(f"{columns[m['testset']]} scored against the OCR of the original images")
    frame = pd.DataFrame(list(by_row.values()))
    names = [columns[t] for t in TESTSET_ORDER if t in columns]
    # in the columns' order, whatever the order of the metrics files (or of the config's keys)
    frame["n_images"] = frame["n_images"].map(lambda d: " ".join(f"{k}:{d[k]}" for k in [*names, *sorted(set(d) - set(names))] if k in d))
    references = frame["reference_notes"] if "reference_notes" in frame else [None] * len(frame)
    frame["note"] = [join_notes(notes.get(t, ""), auto, "; ".join(refs) if isinstance(refs, list) else "")
                     for t, auto, refs in zip(frame["tokenizer"], frame["auto_note"], references)]
    return frame[["tokenizer", *names, "ocr_backend", "n_images", "note"]]


def write_table1(table: str, metrics: list[Path], spec: dict[str, Any], out: Path) -> pd.DataFrame:
    """Table 1a (the class-labelled set) or 1b (rOCR by test set): the CSV, a bar plot (`.png`) and the rows'
    reconstruction grids stacked (`_grids.png`). `spec` is `tables.<table>` of the config."""
    notes = spec.get("notes", {})
    if table == "table1a":
        frame = table1a(metrics, notes)
        plot_bars(frame, "tokenizer", ["L2", "classifier_acc", "code_usage"], "Table 1a: reconstruction on the class-labelled test set",
                  "value", out.with_suffix(".png"))
    else:
        frame = table1b(metrics, spec["columns"], notes)
        plot_bars(frame, "tokenizer", [c for c in frame.columns if c in spec["columns"].values()],
                  "Table 1b: rOCR of reconstructions (higher is better)", "ROUGE-L F", out.with_suffix(".png"))
    write_csv(frame, out)
    grids = [m.with_suffix(".png") for m in metrics if m.with_suffix(".png").exists()]
    if not grids:
        raise ConfigError(f"tables.{table}: no row has a reconstruction grid (it lists no tokenizer or VAE)")
    captions = [json.loads(g.with_suffix(".json").read_text()).get("grid", "originals, then depth 1..D") for g in grids]
    stack_images(grids, [f"{g.parent.name} on {g.stem}: {c}" for g, c in zip(grids, captions)], out.with_name(out.stem + "_grids.png"))
    return frame
