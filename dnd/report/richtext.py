"""The rich-text table (`results/richtext.csv`): PPL-OCR by model and temperature, its figure and sample grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from dnd.report.common import NA, fmt, fmt_setting, join_notes, load_metrics, pyplot, save_figure, stack_images, write_csv

REFERENCE_MODEL = "training images"  # the reference row's model name (dnd.stages.richtext writes it)
TABLE_COLUMNS = ["model", "sampling", "dataset", "temperature", "PPL_OCR", "PPL_OCR_95ci", "n_with_text",
                 "words_per_image", "words_per_image_95ci", "empty_ocr", "n_images", "train_s", "train_cpu_s",
                 "ocr_backend", "language_model", "comparison", "note"]
LOG_SCALE_SPREAD = 20.0  # plot PPL-OCR on a log axis when the largest value is this many times the smallest
NO_DIFFERENCE = "no significant difference"


def _automatic_note(m: dict[str, Any]) -> str:
    parts = [m.get("note", "")]
    if m["ppl_ocr"] is None:
        parts.append(f"PPL-OCR n/a: {m.get('ppl_ocr_na_reason', 'no OCR text')}")
    elif m["empty_ocr"]:
        parts.append(f"PPL-OCR over the {m['n_images'] - m['empty_ocr']} of {m['n_images']} images with OCR text "
                     f"({m['empty_ocr']} read nothing); words per image over all {m['n_images']}")
    return join_notes(*parts)


def _interval(m: dict[str, Any], key: str, digits: int) -> str:
    interval = m.get(key)
    return NA if interval is None else f"[{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def read_benchmarks(paths: Sequence[Path]) -> dict[str, dict[str, float]]:
    """Snakemake benchmark files of the trainings (`<model>.tsv`) → model → wall seconds `s` and `cpu_time`."""
    out = {}
    for path in paths:
        row = pd.read_csv(path, sep="\t").iloc[-1]  # --benchmark-repeats writes a row per repeat: the last
        out[Path(path).stem] = {"s": float(row["s"]), "cpu_time": float(row["cpu_time"])}
    return out


def _label(m: dict[str, Any]) -> str:
    temperature = m.get("temperature")
    return m["model"] if temperature is None else f"{m['model']} T={temperature:g}"


def _order(a: dict[str, Any], b: dict[str, Any], key: str, value_key: str, name: str, higher_is_better: bool) -> str:
    """`a` against `b` on one metric: an order only where the 95 % intervals do not overlap."""
    ia, ib = a.get(key), b.get(key)
    if a.get(value_key) is None or b.get(value_key) is None or ia is None or ib is None:
        return f"{name} vs {_label(b)}: n/a"
    if ia[1] < ib[0] or ib[1] < ia[0]:
        lower = a[value_key] < b[value_key]
        better = lower != higher_is_better
        return f"{name} {'lower' if lower else 'higher'} than {_label(b)} ({'better' if better else 'worse'}, intervals separate)"
    return f"{name} vs {_label(b)}: {NO_DIFFERENCE}"


def _comparisons(m: dict[str, Any], metrics: list[dict[str, Any]]) -> str:
    """A model sampled at temperatures: each temperature against the next lower one of the same model;
    a model without temperature (the DDPM): against every row of the temperature-sampled models."""
    if m.get("is_reference"):
        return ""
    if m.get("temperature") is not None:
        lower = [o for o in metrics if o["model"] == m["model"] and o.get("temperature") is not None
                 and o["temperature"] < m["temperature"]]
        others = [max(lower, key=lambda o: o["temperature"])] if lower else []
    else:
        others = [o for o in metrics if not o.get("is_reference") and o.get("temperature") is not None]
    parts = []
    for other in others:
        parts.append(_order(m, other, "ppl_ocr_ci", "ppl_ocr", "PPL-OCR", higher_is_better=False))
        parts.append(_order(m, other, "words_per_image_ci", "words_per_image", "words/image", higher_is_better=True))
    return join_notes(*parts)


def _row(m: dict[str, Any], notes: dict[str, str], metrics: list[dict[str, Any]],
         benchmarks: dict[str, dict[str, float]]) -> dict[str, Any]:
    train = benchmarks.get(m["model"], {})
    return {
        "model": m["model"],
        "sampling": m.get("sampling_name") or NA,
        "dataset": m["dataset"],
        "temperature": fmt_setting(m.get("temperature")),
        "PPL_OCR": fmt(m["ppl_ocr"], 1),
        "PPL_OCR_95ci": _interval(m, "ppl_ocr_ci", 1),
        "n_with_text": m.get("n_with_text", m["n_images"] - m["empty_ocr"]),
        "words_per_image": fmt(m["words_per_image"], 2),
        "words_per_image_95ci": _interval(m, "words_per_image_ci", 2),
        "empty_ocr": m["empty_ocr"],
        "n_images": m["n_images"],
        "train_s": fmt(train.get("s"), 0),
        "train_cpu_s": fmt(train.get("cpu_time"), 0),
        "ocr_backend": m["ocr_backend"],
        "language_model": m["language_model"],
        "comparison": _comparisons(m, metrics),
        "note": join_notes(notes.get(m["model"], ""), _automatic_note(m)),
    }


def richtext_table(metric_jsons: list[Path], notes: dict[str, str], benchmarks: Sequence[Path] = ()) -> pd.DataFrame:
    """One row per (model, sampling): the reference first, then models in the order given, temperature
    ascending within a model; `notes` by model name; `benchmarks`: the trainings' benchmark files
    (`<model>.tsv`), for the training time columns (n/a for a model without one)."""
    metrics = load_metrics(metric_jsons)
    model_order = list(dict.fromkeys(m["model"] for m in metrics))

    def key(m: dict[str, Any]) -> tuple[bool, int, float]:
        temperature = m.get("temperature")
        return (not m.get("is_reference"), model_order.index(m["model"]), math.inf if temperature is None else temperature)

    times = read_benchmarks(benchmarks)
    return pd.DataFrame([_row(m, notes, metrics, times) for m in sorted(metrics, key=key)], columns=TABLE_COLUMNS)


def _parse_interval(cell: str) -> tuple[float, float]:
    """A `[low, high]` cell back to numbers; (nan, nan) for n/a."""
    if not isinstance(cell, str) or not cell.startswith("["):
        return (math.nan, math.nan)
    low, high = cell.strip("[]").split(",")
    return (float(low), float(high))


def plot_ppl_by_temperature(frame: pd.DataFrame, path: Path) -> None:
    """PPL-OCR against sampling temperature: a line per model sampled at temperatures (95 % intervals as
    error bars); models without one (DDPM) and the training images as horizontal lines (intervals shaded)."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    bounds = frame["PPL_OCR_95ci"].map(_parse_interval)
    data = frame.assign(x=pd.to_numeric(frame["temperature"], errors="coerce"),
                        y=pd.to_numeric(frame["PPL_OCR"], errors="coerce"),
                        low=bounds.map(lambda b: b[0]), high=bounds.map(lambda b: b[1])).dropna(subset=["y"])
    fig, ax = plt.subplots(figsize=(5.8, 3.8))
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)  # axhline does not advance the cycle
    for model, rows in data.dropna(subset=["x"]).groupby("model", sort=False):
        errors = [(rows["y"] - rows["low"]).fillna(0).clip(lower=0), (rows["high"] - rows["y"]).fillna(0).clip(lower=0)]
        ax.errorbar(rows["x"], rows["y"], yerr=errors, marker="o", capsize=3, color=next(colors), label=model)
    for _, row in data[data["x"].isna()].iterrows():
        color = "black" if row["model"] == REFERENCE_MODEL else next(colors)
        label = REFERENCE_MODEL if row["model"] == REFERENCE_MODEL else f"{row['model']} (no temperature)"
        ax.axhline(row["y"], color=color, linestyle="--" if row["model"] == REFERENCE_MODEL else ":", label=label)
        if pd.notna(row["low"]):
            ax.axhspan(row["low"], row["high"], color=color, alpha=0.12)
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


def write_richtext_table(metrics: list[Path], samples: list[Path], spec: dict[str, Any], out: Path,
                         benchmarks: Sequence[Path] = ()) -> pd.DataFrame:
    """The CSV, the PPL-by-temperature figure (`.png`) and the sample grids (`_grids.png`) beside it;
    `spec`: the table's settings (`notes` by model name); `benchmarks`: the trainings' benchmark files."""
    frame = richtext_table(metrics, spec.get("notes", {}), benchmarks)
    plot_ppl_by_temperature(frame, out.with_suffix(".png"))
    stack_grids(samples, [f"{s.parent.name} / {s.name}" for s in samples], out.with_name(out.stem + "_grids.png"))
    write_csv(frame, out)
    return frame
