"""Code-map throughput: tokenization (images/s) and the Arrow reader against a raw np.memmap.

    python benchmarks/bench_codes.py [--device cpu|cuda] [--images 256] [--size 256]

(1) Tokenization: a `demo_f8` and a `paper_f16` RQ-VAE encoding random images (fp32 on CPU, bf16
autocast on GPU). (2) Reading: the same uint16 code maps written as an Arrow IPC shard and as a raw
.npy; iterating CodeMapDataset items vs indexing the np.memmap, printed as a ratio (target: close to 1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import MIN_ROUNDS, Spread, ratio_spread, time_interleaved  # noqa: E402
from dnd.data.codes import CodeMapDataset, CodeMapInfo, write_code_shard  # noqa: E402
from dnd.tokenizer.rqvae import RQVAE, rqvae_config  # noqa: E402


def bench_tokenize(preset: str, device: torch.device, n: int, size: int, batch: int) -> float:
    model = RQVAE(rqvae_config(preset)).to(device).eval()
    images = torch.rand(batch, model.config.in_channels, size, size, device=device) * 2 - 1
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model.encode(images)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(max(1, n // batch)):
            model.encode(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return max(1, n // batch) * batch / (time.perf_counter() - start)


def bench_reader(n: int, rounds: int) -> tuple[Spread, Spread, Spread]:
    """Maps/s of the Arrow reader and of the raw memmap (median [min, max]) and their per-round ratio."""
    info = CodeMapInfo(16, 16, 8, 16384, "bench")
    codes = np.random.default_rng(0).integers(0, 16384, (n, 16, 16, 8), dtype=np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        arrow, raw = Path(tmp) / "codes.arrow", Path(tmp) / "codes.npy"
        write_code_shard(arrow, [str(i) for i in range(n)], codes, None, info)
        np.save(raw, codes)
        dataset, memmap = CodeMapDataset([arrow]), np.load(raw, mmap_mode="r")
        order = [int(i) for i in np.random.default_rng(1).permutation(n)]
        times = time_interleaved({
            "arrow": lambda: [dataset[i] for i in order],
            "raw": lambda: [(memmap[i].astype(np.int64), -1) for i in order],
        }, rounds)
    rates = {name: Spread.of([n / t for t in values]) for name, values in times.items()}
    return rates["arrow"], rates["raw"], ratio_spread(times["raw"], times["arrow"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--maps", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="interleaved timed rounds of the reader")
    args = parser.parse_args()
    device = torch.device(args.device)
    for preset in ("demo_f8", "paper_f16"):
        rate = bench_tokenize(preset, device, args.images, args.size, args.batch)
        print(f"tokenize {preset:<10} {args.size}px on {device.type}: {rate:8.1f} images/s")
    arrow, raw, ratio = bench_reader(args.maps, args.rounds)
    print(f"read {args.maps} code maps 16x16x8 in random order, {args.rounds} interleaved rounds, median [min, max]:")
    print(f"  Arrow {arrow} maps/s, np.memmap {raw} maps/s, Arrow/memmap speed ratio {ratio} (target: close to 1)")


if __name__ == "__main__":
    main()
