"""Tables 2 and 3 (class-conditional generation) from the metrics JSONs of `evaluate_generation`.

Same conventions as the other tables (`dnd.report.common`): one row per (model, cfg scale) or per variant, `n/a` where a metric
cannot run, a `note` column saying why. `demo_classifier_acc` / `demo_classifier_conf` are the accuracy
and mean intended-class probability of a small CNN trained on the real training images, applied to the
samples: a weight-free stand-in that says whether samples look like their class, not FID.
`classifier_fd` / `classifier_precision` / `classifier_recall` are FID's Fréchet distance and ADM's
precision/recall computed by the same code in that classifier's pooled features against the real test
split: "Fréchet distance in the demo classifier's features, not FID". Which evaluator, Inception weights
and reference batch each number used: `row_provenance`, for the table's provenance record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from dnd.metrics.inception import WEIGHTS_SETTING
from dnd.report.common import NA, VARIANT_ORDER, fmt, fmt_setting, join_notes, load_metrics, plot_bars, pyplot, save_figure, write_csv

# Table 3 of the paper, best first by FID (2.58 / 3.18 / 4.12 / 6.32; IS ranks them the same way).
PAPER_ORDER = ("dnd", "vertical", "1d", "parallel")
CLASSIFIER_ACC = "demo_classifier_acc"
CLASSIFIER_CONF = "demo_classifier_conf"
CLASSIFIER_FD, CLASSIFIER_PRECISION, CLASSIFIER_RECALL = "classifier_fd", "classifier_precision", "classifier_recall"
LOWER_IS_BETTER = {"FID": True, "IS": False, "precision": False, "recall": False, CLASSIFIER_ACC: False, CLASSIFIER_CONF: False,
                   CLASSIFIER_FD: True, CLASSIFIER_PRECISION: False, CLASSIFIER_RECALL: False}
METRIC_COLUMNS = ["FID", "IS", "precision", "recall", CLASSIFIER_FD, CLASSIFIER_PRECISION, CLASSIFIER_RECALL,
                  CLASSIFIER_ACC, CLASSIFIER_CONF]
# each metric's bootstrap interval (dnd.metrics.bootstrap), beside the counts it was computed on:
# column -> (metrics JSON block, key, digits)
INTERVAL_COLUMNS = {"FID": ("intervals", "fid", 2), "IS": ("intervals", "is", 1), "precision": ("intervals", "precision", 3),
                    "recall": ("intervals", "recall", 3), CLASSIFIER_FD: ("classifier_intervals", CLASSIFIER_FD, 3),
                    CLASSIFIER_PRECISION: ("classifier_intervals", CLASSIFIER_PRECISION, 3),
                    CLASSIFIER_RECALL: ("classifier_intervals", CLASSIFIER_RECALL, 3),
                    CLASSIFIER_ACC: ("classifier_intervals", "classifier_accuracy", 3)}
COUNT_COLUMNS = [*(f"{name}_95ci" for name in INTERVAL_COLUMNS), "n_samples", "n_reference", "n_classifier_reference",
                 "paper_protocol"]
CLASSIFIER_FD_NOTE = "classifier_fd: Fréchet distance in the demo classifier's features, not FID"
TABLE2_COLUMNS = ["model", "params", "cfg", *METRIC_COLUMNS, *COUNT_COLUMNS, "note"]
TABLE3_COLUMNS = ["variant", "model", "params", "cfg", *METRIC_COLUMNS, *COUNT_COLUMNS, "note"]
FID_NA_NO_WEIGHTS = f"FID/IS/precision/recall n/a: no Inception weights configured ({WEIGHTS_SETTING}; the metrics JSON says more)"
AXIS_LABELS = {
    "FID": "FID vs the training set (lower is better)",
    CLASSIFIER_FD: "Fréchet distance in the demo classifier's\nfeatures vs the real test split\n(not FID; lower is better)",
    CLASSIFIER_ACC: "accuracy of a CNN trained on\nthe real training images\n(FID n/a; higher is better)",
}
PLOT_NAMES = {"FID": "FID", CLASSIFIER_FD: "classifier-feature Fréchet distance (not FID)", CLASSIFIER_ACC: "classifier accuracy"}


def format_params(count: int | None) -> str:
    """1_400_000_000 -> "1.4B", 2_345_678 -> "2.3M", 85_000 -> "85.0K" (the paper writes 1.4B, 675M)."""
    if count is None:
        return NA
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)


def _metric_cells(m: dict[str, Any]) -> dict[str, str]:
    classifier = m.get("classifier") or {}
    return {
        "FID": fmt(m.get("fid"), 2),
        "IS": fmt(m.get("is"), 1),
        "precision": fmt(m.get("precision"), 2),
        "recall": fmt(m.get("recall"), 2),
        CLASSIFIER_FD: fmt(m.get(CLASSIFIER_FD), 3),
        CLASSIFIER_PRECISION: fmt(m.get(CLASSIFIER_PRECISION), 3),
        CLASSIFIER_RECALL: fmt(m.get(CLASSIFIER_RECALL), 3),
        CLASSIFIER_ACC: fmt(classifier.get("accuracy"), 3),
        CLASSIFIER_CONF: fmt(classifier.get("confidence"), 3),
    }


def _interval_cells(m: dict[str, Any]) -> dict[str, str]:
    """`[low, high]` of each metric's bootstrap interval, `n/a` where the metric or its interval is."""
    cells = {}
    for column, (block, key, digits) in INTERVAL_COLUMNS.items():
        interval = (m.get(block) or {}).get(key)
        cells[f"{column}_95ci"] = NA if interval is None else f"[{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"
    return cells


def format_reference_count(n_reference: dict[str, Any] | None) -> str:
    """The images behind the reference's FID statistics and behind its precision/recall features."""
    if not n_reference:
        return NA
    fid = n_reference.get("fid")
    fid = "ADM precomputed (whole set)" if fid is None else str(fid)
    pr = n_reference.get("precision_recall")
    return f"FID:{fid} PR:{NA if pr is None else pr}"


def _automatic_note(m: dict[str, Any]) -> str:
    """Why cells are n/a, and the classifier's ceiling (its accuracy on real test images)."""
    parts = []
    if m.get("is") is None:
        reason = m.get("fid_na_reason", "")
        parts.append(FID_NA_NO_WEIGHTS if WEIGHTS_SETTING in reason else f"FID/IS/precision/recall n/a: {reason}")
    elif m.get("fid") is None:
        parts.append(m.get("frechet_na_reason") or "FID n/a")
    if m.get("is") is not None and m.get("precision") is None:
        parts.append("precision/recall n/a: the reference holds no features")
    classifier = m.get("classifier")
    if classifier:
        parts.append(f"{CLASSIFIER_ACC} on real test images (ceiling): {classifier['real_test_accuracy']:.3f}")
        parts.append(CLASSIFIER_FD_NOTE + (f" ({m['classifier_fd_na_reason']})" if m.get("classifier_fd_na_reason") else ""))
    else:
        parts.append(f"{CLASSIFIER_ACC} n/a: {m.get('classifier_na_reason', 'not computed')}")
    return "; ".join(parts)


def _row(m: dict[str, Any], notes: dict[str, str]) -> dict[str, Any]:
    return {
        "variant": m.get("variant") or NA,
        "model": m["model"],
        "params": format_params(m.get("params")),
        "cfg": fmt_setting(m.get("cfg_scale")),
        **_metric_cells(m),
        **_interval_cells(m),
        "n_samples": m["n_samples"],
        "n_reference": format_reference_count(m.get("n_reference")),
        "n_classifier_reference": NA if m.get("classifier_n_reference") is None else m["classifier_n_reference"],
        "paper_protocol": m.get("paper_protocol", NA),
        "note": join_notes(notes.get(m["model"], ""), _automatic_note(m)),
    }


def table2(metric_jsons: Sequence[Path], notes: dict[str, str]) -> pd.DataFrame:
    """Rows: model × cfg scale (models in the order given, cfg ascending); `notes` by model name."""
    metrics = load_metrics(metric_jsons)
    model_order = list(dict.fromkeys(m["model"] for m in metrics))
    metrics.sort(key=lambda m: (model_order.index(m["model"]), m.get("cfg_scale") or 0.0))
    return pd.DataFrame([_row(m, notes) for m in metrics], columns=TABLE2_COLUMNS)


def table3(
    metric_jsons: Sequence[Path], variant_order: Sequence[str] = VARIANT_ORDER, notes: dict[str, str] | None = None
) -> pd.DataFrame:
    """Rows: one per variant in `variant_order`, all sampled with the same settings (else ValueError)."""
    metrics = load_metrics(metric_jsons)
    variants = [m.get("variant") for m in metrics]
    unknown = [v for v in variants if v not in variant_order]
    if unknown or len(set(variants)) != len(variants):
        raise ValueError(f"Table 3 needs one metrics file per variant of {tuple(variant_order)}, got variants {variants}")
    settings = {(m.get("cfg_scale"), m.get("temperature")) for m in metrics}
    if len(settings) > 1:
        raise ValueError(f"Table 3 compares variants at one sampling setting; got (cfg, temperature) {sorted(settings, key=str)}")
    metrics.sort(key=lambda m: list(variant_order).index(m["variant"]))
    return pd.DataFrame([_row(m, notes or {}) for m in metrics], columns=TABLE3_COLUMNS)


def numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """A table column as floats (n/a → NaN)."""
    return pd.to_numeric(frame[column], errors="coerce")


def headline_metric(frame: pd.DataFrame) -> str:
    """FID when any row has one; else the Fréchet distance in the demo classifier's features (the demo without
    Inception weights); else the classifier accuracy."""
    for metric in ("FID", CLASSIFIER_FD):
        if metric in frame and numeric(frame, metric).notna().any():
            return metric
    return CLASSIFIER_ACC


def parse_interval(cell: Any) -> tuple[float, float] | None:
    """"[low, high]" (a table's `_95ci` cell) -> (low, high); None for n/a."""
    if not isinstance(cell, str) or not cell.startswith("["):
        return None
    low, high = (float(part) for part in cell.strip("[]").split(","))
    return low, high


def pair_verdict(better: str, worse: str, intervals: dict[str, tuple[float, float] | None], lower: bool) -> str:
    """The paper ranks `better` above `worse`: "paper" when their intervals separate that way, "opposite"
    when they separate the other way, else "no significant difference" (overlap, or an interval missing)."""
    a, b = intervals.get(better), intervals.get(worse)
    if a is None or b is None:
        return "no significant difference"
    if (a[1] < b[0]) if lower else (a[0] > b[1]):
        return "paper"
    if (b[1] < a[0]) if lower else (b[0] > a[1]):
        return "opposite"
    return "no significant difference"


def order_note(frame: pd.DataFrame, metric: str) -> str:
    """One sentence: does Table 3 rank the variants as the paper does (dnd, vertical, 1d, parallel, best
    first by FID) on `metric`? Only where the 95 % intervals of consecutive variants separate: each pair is
    "paper's order", "opposite order" or "no significant difference"; the order is claimed when every
    pair separates the paper's way."""
    indexed = frame.set_index("variant")
    values = numeric(indexed, metric).dropna()
    present = [v for v in PAPER_ORDER if v in values.index]
    if len(present) < 2:
        return f"Table 3 cannot be compared with the paper's order on {metric}: fewer than two variants have a value."
    ci_column = f"{metric}_95ci"
    intervals = {v: parse_interval(indexed[ci_column].get(v)) if ci_column in indexed else None for v in present}
    lower = LOWER_IS_BETTER[metric]
    observed = sorted(present, key=lambda v: values[v] if lower else -values[v])
    chain = ", ".join(f"{v} ({values[v]:.3g})" for v in observed)
    scope = "" if len(present) == len(PAPER_ORDER) else f" (only {len(present)} of {len(PAPER_ORDER)} variants have a value)"
    verdicts = {(a, b): pair_verdict(a, b, intervals, lower) for a, b in zip(present, present[1:])}
    pairs = "; ".join(f"{a} vs {b}: " + {"paper": "paper's order (95 % intervals separate)",
                                           "opposite": "opposite order (95 % intervals separate)"}.get(v, v)
                      for (a, b), v in verdicts.items())
    direction = "lower" if lower else "higher"
    name = f"{metric} ({CLASSIFIER_FD_NOTE.split(': ', 1)[1]})" if metric == CLASSIFIER_FD else metric
    if all(v == "paper" for v in verdicts.values()):
        return (f"Table 3 shows the paper's order on {name}{scope}, every consecutive pair's 95 % intervals separating: "
                f"best first ({direction} is better) {chain}.")
    return (f"Table 3 does not show the paper's order on {name}{scope}: best first ({direction} is better) {chain}; "
            f"the paper (FID, ImageNet 256, 1.4B) has {', '.join(present)}; by pair: {pairs}.")


def row_provenance(metric_jsons: Sequence[Path]) -> list[dict[str, Any]]:
    """For each metrics file: the evaluator, Inception weights (path, sha256) and reference behind its numbers."""
    rows = []
    for path, m in zip(metric_jsons, load_metrics(metric_jsons)):
        provenance = m.get("provenance", {})
        reference = provenance.get("reference", {})
        rows.append({
            "metrics": str(path),
            "model": m["model"],
            "sampling": m.get("sampling_name"),
            "evaluator": provenance.get("evaluator"),
            "comparability": provenance.get("comparability"),
            "feature_extractor": provenance.get("feature_extractor"),
            "inception_weights": provenance.get("inception_weights"),
            "inception_weights_sha256": provenance.get("inception_weights_sha256"),
            "reference": {key: value for key, value in reference.items() if key.startswith("reference") or key in ("available", "reason")},
            "fid_na_reason": m.get("fid_na_reason"),
            "classifier": provenance.get("classifier"),
            "samples": provenance.get("samples"),
            "samples_sha256": provenance.get("samples_sha256"),
        })
    return rows


def plot_fid_vs_cfg(frame: pd.DataFrame, path: Path) -> None:
    """FID against the cfg scale, one line per model; the classifier accuracy, labelled so, when FID is n/a."""
    plt = pyplot()

    metric = headline_metric(frame)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    data = frame.assign(x=numeric(frame, "cfg"), y=numeric(frame, metric)).dropna(subset=["x", "y"])
    for model, rows in data.groupby("model", sort=False):
        ax.plot(rows["x"], rows["y"], marker="o", label=f"{model} ({rows['params'].iloc[0]})")
    if data.empty:
        ax.text(0.5, 0.5, "no metric available: FID and the classifier accuracy are n/a (see the table's notes)",
                ha="center", va="center", wrap=True, transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("classifier-free guidance scale")
    ax.set_ylabel(AXIS_LABELS[metric], fontsize=9)
    ax.set_title("Table 2: " + PLOT_NAMES[metric] + " vs cfg scale")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def write_generation_table(table: str, metrics: list[Path], spec: dict[str, Any], out: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Table 2 (models × cfg scale, with FID-vs-cfg plot) or Table 3 (the four variants, with a bar plot and a
    note on whether the paper's order shows); returns the frame and what the provenance record adds."""
    notes = spec.get("notes", {})
    frame = table2(metrics, notes) if table == "table2" else table3(metrics, notes=notes)
    extra: dict[str, Any] = {"rows": row_provenance(metrics)}
    if table == "table3":
        metric = headline_metric(frame)
        extra["order_note"] = order_note(frame, metric)
        # the other metrics' verdicts, for the provenance record (the accuracy stays a column)
        extra["order_notes"] = {m: order_note(frame, m) for m in ("FID", CLASSIFIER_FD, CLASSIFIER_PRECISION,
                                                                  CLASSIFIER_RECALL, CLASSIFIER_ACC)}
        frame["note"] = [f"{n}; {extra['order_note']}" if n else extra["order_note"] for n in frame["note"]]
        plot_bars(frame, "variant", [metric], f"Table 3: the four variants ({metric})", AXIS_LABELS.get(metric, metric),
                  out.with_suffix(".png"), interval_column=f"{metric}_95ci")
    else:
        plot_fid_vs_cfg(frame, out.with_suffix(".png"))
    write_csv(frame, out)
    return frame, extra
