"""What every table and figure of the report shares: one metrics loader, one number formatter, one `n/a`
convention, notes joined one way, atomic CSV and PNG writers, bar plots whose axes say what they show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from dnd.atomic import atomic_path

NA = "n/a"  # a cell whose metric could not be computed; the row's note says why
VARIANT_ORDER = ("1d", "parallel", "vertical", "dnd")  # the paper's Table 3 row order (its table and figures)


def load_metrics(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The metrics JSONs of the evaluation stages, in the order given."""
    return [json.loads(Path(p).read_text()) for p in paths]


def fmt(value: float | None, digits: int = 4) -> str:
    """A metric with `digits` decimals, or `n/a` when it is None."""
    return NA if value is None else f"{value:.{digits}f}"


def fmt_setting(value: float | None) -> str:
    """A sampling setting (cfg scale, temperature) as written in the paper: 1.5, 2, or `n/a`."""
    return NA if value is None else f"{value:g}"


def join_notes(*parts: str) -> str:
    return "; ".join(filter(None, parts))


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(frame: pd.DataFrame, label_column: str, value_columns: list[str], title: str, ylabel: str, path: Path,
              interval_column: str | None = None) -> None:
    """Grouped bars: one group per row, labelled by `label_column` (the x axis says which), a bar per value column;
    with one value column, `interval_column` ("[low, high]" cells) draws each bar's interval."""
    plt = pyplot()
    numeric = frame.set_index(label_column)[value_columns].apply(pd.to_numeric, errors="coerce")
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(numeric), 3.6))
    numeric.plot.bar(ax=ax, rot=20)
    if interval_column is not None and len(value_columns) == 1 and interval_column in frame:
        for x, (value, cell) in enumerate(zip(numeric[value_columns[0]], frame[interval_column])):
            if isinstance(cell, str) and cell.startswith("[") and pd.notna(value):
                low, high = (float(part) for part in cell.strip("[]").split(","))
                ax.errorbar(x, value, yerr=[[max(value - low, 0)], [max(high - value, 0)]], fmt="none", color="black", capsize=4)
    ax.set_title(title)
    ax.set_xlabel(label_column)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def stack_images(paths: list[Path], labels: list[str], path: Path) -> None:
    """One figure of image grids (recon grids, sample grids) with a label above each."""
    from PIL import Image

    plt = pyplot()
    fig, axes = plt.subplots(len(paths), 1, figsize=(8, 3 * len(paths)), squeeze=False)
    for ax, image_path, label in zip(axes[:, 0], paths, labels):
        ax.imshow(Image.open(image_path), cmap="gray")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    save_figure(fig, path)
