"""Precision/recall with float16 distances (the ADM evaluator's DistanceBlock) against float32, and the cost of
the bootstrap intervals, on Inception-like features.

    python benchmarks/bench_pr_distance_dtype.py [--device cpu|cuda] [--real 2000] [--fake 2000] [--seeds 3]

No Inception weights ship with the project, so the features are synthetic but shaped like pool_3 activations
(2048 dimensions, non-negative, clustered: a mixture of 100 ReLU'd Gaussian clusters, per-dimension means
≈ 0.4, squared norms ≈ 500); the samples come from the same clusters, widened and shifted, so precision and
recall land mid-range where a distance's rounding can flip a membership. Printed per seed: precision and
recall under both dtypes, their difference, and the share of k-NN radii and memberships that change.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnd.metrics.bootstrap import BootstrapSettings, fid_interval, fraction_interval, is_interval  # noqa: E402
from dnd.metrics.fid import compute_stats, manifold_membership, manifold_radii  # noqa: E402

DIM, CLUSTERS = 2048, 100


def inception_like(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float, shift: float) -> np.ndarray:
    picks = rng.integers(0, len(centres), n)
    return np.maximum(centres[picks] + shift + rng.normal(0, spread, (n, DIM)), 0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--real", type=int, default=2000, help="reference feature vectors (ADM: 10,000)")
    parser.add_argument("--fake", type=int, default=2000, help="sample feature vectors (the paper: 50,000)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=100, help="bootstrap resamples timed at the end")
    args = parser.parse_args()
    print(f"device {args.device}, {args.real} real and {args.fake} fake vectors of {DIM} dimensions")
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        centres = np.maximum(rng.normal(0.3, 0.5, (CLUSTERS, DIM)), 0)
        real = inception_like(rng, centres, args.real, spread=0.3, shift=0.0)
        fake = inception_like(rng, centres, args.fake, spread=0.3, shift=0.012)
        result = {}
        for dtype in ("float32", "float16"):
            start = time.perf_counter()
            members = manifold_membership(real, fake, k=3, device=args.device, distance_dtype=dtype)
            result[dtype] = (members, time.perf_counter() - start)
        radii = {dtype: manifold_radii(torch.as_tensor(real, device=args.device), 3, 4096, dtype).cpu().numpy()
                 for dtype in ("float32", "float16")}
        (p32, r32), (p16, r16) = [(m[0].mean(), m[1].mean()) for m, _ in (result["float32"], result["float16"])]
        flips = [float((result["float32"][0][i] != result["float16"][0][i]).mean()) for i in (0, 1)]
        radius_change = np.abs(radii["float16"] / radii["float32"] - 1)
        print(f"seed {seed}: precision fp32 {p32:.4f} fp16 {p16:.4f} (Δ {p16 - p32:+.4f}); recall fp32 {r32:.4f} "
              f"fp16 {r16:.4f} (Δ {r16 - r32:+.4f}); memberships flipped: samples {flips[0]:.2%}, real {flips[1]:.2%}; "
              f"real k-NN radii: median relative change {np.median(radius_change):.1e}, max {radius_change.max():.1e}; "
              f"time fp32 {result['float32'][1]:.1f} s, fp16 {result['float16'][1]:.1f} s")
    settings = BootstrapSettings(resamples=args.resamples)
    logits = rng.normal(0, 3, (args.fake, 1008))
    for name, run in (("FID", lambda: fid_interval(fake, compute_stats(real), None, settings, args.device)),
                      ("IS", lambda: is_interval(logits, settings)),
                      ("precision", lambda: fraction_interval(result["float16"][0][0], settings, "precision"))):
        start = time.perf_counter()
        interval = run()
        print(f"{name} bootstrap, {args.resamples} resamples: [{interval[0]:.4g}, {interval[1]:.4g}] in "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
