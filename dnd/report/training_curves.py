"""Validation loss per depth against training steps for Table 3's variants (`results/val_loss.csv` + `.png`).

Each transformer training run writes `val_history.csv` (step, loss, loss_depth1..D, + ema_... with EMA) beside
its `model.pt`; this module stacks them into one long table (variant, model, weights, step, depth, loss; depth
"all" is the mean over depths the trainer reports as `loss`) and draws one panel per variant, one line per depth,
so that an under-trained variant (its loss still falling at the last step) shows beside the others.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dnd.report.common import pyplot, save_figure, write_csv

CURVE_COLUMNS = ["variant", "model", "weights", "step", "depth", "loss"]


def long_history(history: pd.DataFrame, variant: str, model: str) -> pd.DataFrame:
    """One run's val_history.csv -> rows (variant, model, weights raw|ema, step, depth 1..D or "all", loss)."""
    rows = []
    for column in history.columns.drop("step"):
        weights, name = ("ema", column.removeprefix("ema_")) if column.startswith("ema_") else ("raw", column)
        depth = "all" if name == "loss" else name.removeprefix("loss_depth")
        rows.append(pd.DataFrame({"variant": variant, "model": model, "weights": weights, "step": history["step"],
                                  "depth": depth, "loss": history[column]}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=CURVE_COLUMNS)


def val_loss_table(histories: dict[str, tuple[str, Path]]) -> pd.DataFrame:
    """{variant: (model, val_history.csv)} -> the long table, variants in the given order."""
    frames = [long_history(pd.read_csv(path), variant, model) for variant, (model, path) in histories.items()]
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS] if frames else pd.DataFrame(columns=CURVE_COLUMNS)


def plot_val_loss(table: pd.DataFrame, variants: list[str], path: Path) -> None:
    """One panel per variant (shared y axis): the raw weights' validation loss per depth against steps."""
    plt = pyplot()
    fig, axes = plt.subplots(1, max(len(variants), 1), figsize=(2.9 * max(len(variants), 1), 3.2), sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants):
        rows = table[(table["variant"] == variant) & (table["weights"] == "raw") & (table["depth"] != "all")]
        for depth, curve in rows.groupby("depth", sort=True):
            ax.plot(curve["step"], curve["loss"], marker="o", markersize=3, label=f"depth {depth}")
        model = rows["model"].iloc[0] if len(rows) else "no validation"
        ax.set_title(f"{variant} ({model})", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if len(rows):
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no validation figures", ha="center", va="center", transform=ax.transAxes)
    axes[0][0].set_ylabel("validation cross-entropy (nats)")
    fig.suptitle("Validation loss per depth against steps (Table 3's variants, raw weights)", fontsize=10)
    save_figure(fig, path)


def write_val_loss(histories: dict[str, tuple[str, Path]], out: Path) -> pd.DataFrame:
    """`out` (.csv, the long table) and its figure beside it (.png)."""
    table = val_loss_table(histories)
    write_csv(table, out)
    plot_val_loss(table, list(histories), Path(out).with_suffix(".png"))
    return table
