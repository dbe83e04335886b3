"""The rich-text table (`results/richtext.csv`): PPL-OCR by model and temperature, its figure and sample grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from dnd.report.common import NA, fmt, fmt_setting, join_notes, load_metrics, pyplot, save_figure, stack_images, write_csv

REFERENCE_MODEL = "training images"  # the reference row's model name (dnd.stages.richtext writes it)
TABLE_COLUMNS = ["model", "sampling", "dataset", "temperature", "PPL_OCR", "words_per_image", "empty_ocr", "n_images",
                 "ocr_backend", "language_model", "note"]
LOG_SCALE_SPREAD = 20.0  # plot PPL-OCR on a log axis when the largest value is this many times the smallest




def _automatic_note(m: dict[str, Any]) -> str:
    parts = [m.get("note", "")]
    if m["ppl_ocr"] is None:
        parts.append(f"PPL-OCR n/a: {m.get('ppl_ocr_na_reason', 'no OCR text')}")
    elif m["empty_ocr"]:
        parts.append(f"{m['empty_ocr']} of {m['n_images']} images with no OCR text, left out of PPL-OCR")
    return join_notes(*parts)


def _row(m: dict[str, Any], notes: dict[str, str]) -> dict[str, Any]:
    return {
        "model": m["model"],
        "sampling": m.get("sampling_name") or NA,
        "dataset": m["dataset"],
        "temperature": fmt_setting(m.get("temperature")),
        "PPL_OCR": fmt(m["ppl_ocr"], 1),
        "words_per_image": fmt(m["words_per_image"], 1),
        "empty_ocr": m["empty_ocr"],
        "n_images": m["n_images"],
        "ocr_backend": m["ocr_backend"],
        "language_model": m["language_model"],
        "note": join_notes(notes.get(m["model"], ""), _automatic_note(m)),
    }


def richtext_table(metric_jsons: list[Path], notes: dict[str, str]) -> pd.DataFrame:
    """One row per (model, sampling): the reference first, then models in the order given, temperature
    ascending within a model; `notes` by model name."""
    metrics = load_metrics(metric_jsons)
    model_order = list(dict.fromkeys(m["model"] for m in metrics))

    def key(m: dict[str, Any]) -> tuple[bool, int, float]:
        temperature = m.get("temperature")
        return (not m.get("is_reference"), model_order.index(m["model"]), math.inf if temperature is None else temperature)

    return pd.DataFrame([_row(m, notes) for m in sorted(metrics, key=key)], columns=TABLE_COLUMNS)


def plot_ppl_by_temperature(frame: pd.DataFrame, path: Path) -> None:
    """PPL-OCR against sampling temperature: a line per model sampled at temperatures; models without one
    (DDPM) and the training images as horizontal lines."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    data = frame.assign(x=pd.to_numeric(frame["temperature"], errors="coerce"),
                        y=pd.to_numeric(frame["PPL_OCR"], errors="coerce")).dropna(subset=["y"])
    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)  # axhline does not advance the cycle
    for model, rows in data.dropna(subset=["x"]).groupby("model", sort=False):
        ax.plot(rows["x"], rows["y"], marker="o", color=next(colors), label=model)
    for _, row in data[data["x"].isna()].iterrows():
        if row["model"] == REFERENCE_MODEL:
            ax.axhline(row["y"], color="black", linestyle="--", label=REFERENCE_MODEL)
        else:
            ax.axhline(row["y"], color=next(colors), linestyle=":", label=f"{row['model']} (no temperature)")
    if data.empty:
        ax.text(0.5, 0.5, "PPL-OCR n/a for every row (see the table's notes)", ha="center", va="center",
                transform=ax.transAxes)
    else:
        if data["y"].max() / data["y"].min() > LOG_SCALE_SPREAD:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 50, not 5×10¹
            ax.yaxis.set_minor_formatter(NullFormatter())
        if data["x"].isna().all():
            ax.set_xlim(0.0, 1.1)  # only horizontal lines: show the usual temperature range
        ax.legend(fontsize=8)
    lms = ", ".join(frame["language_model"].astype(str).unique())
    ocrs = ", ".join(frame["ocr_backend"].astype(str).unique())
    ax.set_xlabel("sampling temperature")
    ax.set_ylabel(f"PPL-OCR: {lms} perplexity\nof {ocrs} text (lower is better)", fontsize=9)
    ax.set_title("Rich-text generation: PPL-OCR vs temperature")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def stack_grids(sample_dirs: Sequence[Path], labels: Sequence[str], path: Path) -> None:
    """One figure of the samples folders' `grid.png`, a label above each."""
    stack_images([Path(d) / "grid.png" for d in sample_dirs], list(labels), path)


def write_richtext_table(metrics: list[Path], samples: list[Path], spec: dict[str, Any], out: Path) -> pd.DataFrame:
    """The CSV, the PPL-by-temperature figure (`.png`) and the sample grids (`_grids.png`) beside it;
    `spec`: the table's settings (`notes` by model name)."""
    frame = richtext_table(metrics, spec.get("notes", {}))
    plot_ppl_by_temperature(frame, out.with_suffix(".png"))
    stack_grids(samples, [f"{s.parent.name} / {s.name}" for s in samples], out.with_name(out.stem + "_grids.png"))
    write_csv(frame, out)
    return frame
