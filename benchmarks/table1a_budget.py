"""Table 1a's CPU bill and its depth trend, read from a finished run (Snakemake benchmark files + metrics).

    OMP_NUM_THREADS=1 snakemake --cores 1 results/table1a.csv
    python benchmarks/table1a_budget.py [--results results] [--rows cls_d1 cls_d2 cls_d4 cls_d8]

Sums the `cpu_time` column (seconds of CPU, user + system, of the job's processes) of every job Table 1a
needs: the class set's writer, prepare_images, the tokenizers, train_classifier and the reconstruction
evaluations; then prints depth → L2 and classifier accuracy on reconstructions with their intervals and N,
and each row's difference from the first row, paired over the same test images (95 % percentile bootstrap of
the per-image differences, 1,000 resamples, seed 0): the rows share their test images, so the paired interval
is the one that says whether one depth beats another.
A job without a benchmark file (not run by Snakemake in this results folder) is named as missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dnd.metrics.bootstrap import BootstrapSettings, mean_interval

PAIRED = BootstrapSettings(resamples=1000, seed=0)


def cpu_seconds(tsv: Path) -> float | None:
    return float(pd.read_csv(tsv, sep="\t")["cpu_time"].iloc[-1]) if tsv.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"), help="the run's results folder")
    parser.add_argument("--rows", nargs="+", default=["cls_d1", "cls_d2", "cls_d4", "cls_d8"], help="Table 1a's tokenizers")
    parser.add_argument("--writer", default="write_demo_glyphs", help="the rule that wrote the class set")
    args = parser.parse_args()
    bench = args.results / "benchmarks"
    jobs = {args.writer: bench / f"{args.writer}.tsv", "prepare_images": bench / "prepare_images.tsv",
            "train_classifier": bench / "train_classifier" / "classes.tsv"}
    jobs |= {f"train_tokenizer {row}": bench / "train_tokenizer" / f"{row}.tsv" for row in args.rows}
    jobs |= {f"evaluate_reconstruction {row}": bench / "evaluate_reconstruction" / row / "classes.tsv" for row in args.rows}
    total, missing = 0.0, []
    for job, tsv in jobs.items():
        seconds = cpu_seconds(tsv)
        print(f"{job:40s} {'missing' if seconds is None else f'{seconds:8.1f} CPU-s'}")
        if seconds is None:
            missing.append(job)
        else:
            total += seconds
    print(f"{'total':40s} {total:8.1f} CPU-s" + (f" (missing: {', '.join(missing)})" if missing else ""))
    print("\n| tokenizer | depth | L2 [95 % CI] | ΔL2 vs first row, paired [95 % CI] | classifier acc. on reconstructions [95 % CI] "
          "| Δacc. vs first row, paired [95 % CI] | acc. on originals | N |")
    print("|---|---|---|---|---|---|---|---|")
    first = None
    for row in args.rows:
        path = args.results / "metrics" / "recon" / row / "classes.json"
        if not path.exists():
            print(f"| {row} | missing | | | | |")
            continue
        m = json.loads(path.read_text())
        l2, acc = m.get("l2_interval") or [None, None], m.get("classifier_acc_interval") or [None, None]
        accuracy = "n/a" if m.get("classifier_acc") is None else f"{m['classifier_acc']:.3f} [{acc[0]:.3f}, {acc[1]:.3f}]"
        original = "n/a" if m.get("classifier_acc_originals") is None else f"{m['classifier_acc_originals']:.3f}"
        first = first or m
        dl2, dacc = paired(m, first, "l2_per_image", 4), paired(m, first, "classifier_hits_per_image", 3)
        print(f"| {row} | {m.get('depth')} | {m['l2']:.4f} [{l2[0]:.4f}, {l2[1]:.4f}] | {dl2} | {accuracy} | {dacc} | {original} "
              f"| {m['n_images']} |")


def paired(m: dict, first: dict, key: str, digits: int) -> str:
    """Mean per-image difference from the first row over the same test images, with its interval."""
    if m is first or key not in m or key not in first or len(m[key]) != len(first[key]):
        return "—" if m is first else "n/a"
    diff = np.asarray(m[key], dtype=np.float64) - np.asarray(first[key], dtype=np.float64)
    low, high = mean_interval(diff, PAIRED, "l2" if key.startswith("l2") else "classifier_acc")
    return f"{diff.mean():+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


if __name__ == "__main__":
    main()
