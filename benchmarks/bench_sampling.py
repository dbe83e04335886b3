"""Sampling speed of the DnD-Transformer against 1-D baselines: the paper's efficiency claim, measured.

Same backbone (default: the B preset, 12 layers, dim 768) with a 16384-code vocabulary and random
weights (speed does not depend on them), temperature-1 sampling:

  (a) DnD with depth D over P positions: P forward passes for P·D codes
  (b) a 1-D model over P codes (LlamaGen): P passes              -> (a) / (b) time should be <= 1.15
  (c) a 1-D model over all P·D codes in one sequence: P·D passes -> (c) / (a) time should be >= 0.8·D
  (d) DnD with the KV cache vs recomputing the whole prefix (all blocks and heads) at every position
      -> should be >= 10x. With --compile only the cached decode step is compiled (CUDA graphs on GPU);
      the recomputation, whose shapes change every step, stays eager.

All runs are timed interleaved (benchmarks/timing.py: one warm-up each, then --repeats rounds a b c a b c
...); each ratio is taken per round and printed as median [min, max] over the rounds. Examples:

    python benchmarks/bench_sampling.py --device cuda --compile --depth 2 4 8 --mfu
    python benchmarks/bench_sampling.py --device cpu --positions 64 --repeats 2
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.models import matmul_weights, sampling_ready_transformer, sync  # noqa: E402
from benchmarks.timing import MIN_ROUNDS, Spread, check_line, ratio_spread, time_interleaved  # noqa: E402
from dnd.transformer import (  # noqa: E402
    SamplingConfig,
    Transformer,
    TransformerConfig,
    code_cross_entropy,
    sample_sequence,
)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# dense bf16 peak of common accelerators, FLOP/s (SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--size", default="B", help="backbone preset (B, L, XL, XXL, XXXL)")
    parser.add_argument("--vocab", type=int, default=16384, help="codebook size")
    parser.add_argument("--batch", type=int, default=8, help="images per run")
    parser.add_argument("--positions", type=int, default=None, help="spatial positions P (default: 256 GPU, 64 CPU)")
    parser.add_argument("--uncached-positions", type=int, default=None, help="P for (d) (default: P)")
    parser.add_argument("--depth", type=int, nargs="+", default=[2], help="DnD depths D to time, e.g. 2 4 8")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="bf16 (GPU default) or fp32 (CPU)")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="guidance scale (!= 1 doubles the batch)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the cached decode step")
    parser.add_argument("--repeats", type=int, default=MIN_ROUNDS, help="timed rounds after one warm-up")
    parser.add_argument("--mfu", action="store_true", help="also estimate the MFU of a training step (GPU only)")
    parser.add_argument("--mfu-batch", type=int, default=32, help="code maps per training step for --mfu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="accelerator bf16 peak (default: by name)")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    args.positions = args.positions or (256 if on_gpu else 64)
    args.uncached_positions = args.uncached_positions or args.positions
    args.dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    return args


@dataclass
class SamplingRun:
    name: str
    variant: str
    depth: int
    positions: int  # forward passes per image set
    cached: bool = True
    times: list[float] = field(default_factory=list)  # one per timed round

    @property
    def seconds(self) -> float:
        return Spread.of(self.times).median

    def row(self, batch: int) -> str:
        codes = self.positions * self.depth
        spread = Spread.of(self.times)
        return (
            f"{self.name:<34} {self.positions:>7} {codes:>7} {spread.median:>9.3f} {spread.low:>7.3f} "
            f"{spread.high:>7.3f} {batch * codes / self.seconds:>11.0f} {batch / self.seconds:>9.2f}"
        )


def build(args: argparse.Namespace, variant: str, depth: int, positions: int) -> Transformer:
    grid = math.ceil(math.sqrt(positions))  # the rotary table must cover every position
    torch.manual_seed(0)
    model = sampling_ready_transformer(args.size, args.vocab, depth, grid, variant)
    return model.to(device=args.device, dtype=DTYPES[args.dtype]).eval()


def matmul_params(args: argparse.Namespace, variant: str, depth: int, positions: int) -> int:
    """`matmul_weights` of the model `build` would make, counted on the meta device (no memory)."""
    with torch.device("meta"):
        return matmul_weights(sampling_ready_transformer(args.size, args.vocab, depth, math.ceil(math.sqrt(positions)), variant))


def time_runs(args: argparse.Namespace, runs: list[SamplingRun]) -> None:
    """Build each model once, then time all runs interleaved (warm-up, then --repeats rounds)."""
    models: dict[tuple[str, int, int], Transformer] = {}
    labels = torch.randint(0, TransformerConfig.num_classes, (args.batch,))
    cfg = SamplingConfig(temperature=1.0, cfg_scale=args.cfg_scale)
    calls = {}
    for run in runs:
        key = (run.variant, run.depth, run.positions)
        if key not in models:  # the cached and uncached (d) runs share a model when P matches
            models[key] = build(args, *key)
        model = models[key]
        options = dict(num_positions=run.positions, use_cache=run.cached, compile=args.compile and run.cached)
        calls[run.name] = lambda model=model, options=options: sample_sequence(model, labels, cfg, **options)
    times = time_interleaved(calls, args.repeats, sync=lambda: sync(args.device))
    for run in runs:
        run.times = times[run.name]


def training_mfu(args: argparse.Namespace, depth: int) -> str:
    if not args.device.startswith("cuda"):
        return "n/a on CPU"
    device_name = torch.cuda.get_device_name()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (flops for key, flops in PEAK_BF16.items() if key in device_name), None
    )
    if peak is None:
        return f"n/a: unknown peak for {device_name!r}, pass --peak-tflops"
    grid = math.isqrt(args.positions)
    config = TransformerConfig.preset(args.size, vocab_size=args.vocab, depth=depth, grid_size=grid, variant="dnd")
    model = Transformer(config).to(args.device).train()
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    codes = torch.randint(0, args.vocab, (args.mfu_batch, grid, grid, depth), device=args.device)
    labels = torch.randint(0, config.num_classes, (args.mfu_batch,), device=args.device)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = code_cross_entropy(step_model(codes, labels), codes)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (and compilation)
    seconds = Spread.of(
        time_interleaved({"step": lambda: [step() for _ in range(5)]}, args.repeats, lambda: sync(args.device),
                         warmup=False)["step"]
    ).median / 5
    # 6 FLOPs per matmul weight per token (forward + backward) + causal attention (PaLM's estimate)
    embeddings = model.tok_embeddings.weight.numel() + model.class_embedding.weight.numel()
    tokens = grid * grid
    flops_per_token = 6 * (model.num_params() - embeddings) + 12 * config.n_layer * config.dim * tokens
    achieved = flops_per_token * tokens * args.mfu_batch / seconds
    return (
        f"{achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s ({device_name}; {seconds * 1e3:.0f} ms/step, "
        f"batch {args.mfu_batch}x{tokens} positions, depth {depth}, bf16 autocast"
        f"{', compiled' if args.compile else ''})"
    )


def main() -> None:
    args = parse_args()
    torch.set_float32_matmul_precision("high")
    torch._dynamo.config.cache_size_limit = 64  # one compiled decode step per model timed here
    P, first_depth = args.positions, args.depth[0]
    print(
        f"device {args.device}, {args.dtype}, size {args.size}, vocab {args.vocab}, batch {args.batch}, "
        f"P={P} positions, cfg_scale {args.cfg_scale}, compile {args.compile}, torch {torch.__version__}"
        + (f", {torch.get_num_threads()} threads" if args.device == "cpu" else f", {torch.cuda.get_device_name()}")
    )
    one_d = SamplingRun(f"(b) 1D over P={P}", "1d", 1, P)
    runs = [one_d]
    pairs = []
    for depth in args.depth:
        dnd = SamplingRun(f"(a) DnD D={depth} over P={P}", "dnd", depth, P)
        long = SamplingRun(f"(c) 1D over P*D={P * depth}", "1d", 1, P * depth)
        runs += [dnd, long]
        pairs.append((depth, dnd, long))
    Pu = args.uncached_positions
    cached = SamplingRun(f"(d) DnD D={first_depth} cached, P={Pu}", "dnd", first_depth, Pu)
    uncached = SamplingRun(f"(d) DnD D={first_depth} uncached, P={Pu}", "dnd", first_depth, Pu, cached=False)
    runs += [cached, uncached]
    time_runs(args, runs)

    print(f"{args.repeats} interleaved rounds; s/run is the median, min and max beside it")
    print(f"{'run':<34} {'passes':>7} {'codes':>7} {'s/run':>9} {'min':>7} {'max':>7} {'codes/s':>11} {'images/s':>9}")
    for run in runs:
        print(run.row(args.batch))
    checks = []
    one_d_weights = matmul_params(args, "1d", 1, P)
    for depth, dnd, long in pairs:
        floor = matmul_params(args, "dnd", depth, P) / one_d_weights
        print(f"(a)/(b) D={depth}: DnD multiplies {floor:.2f}x the weights of 1D per position "
              f"(its {depth} heads of {args.vocab} codes against one): the time ratio where matmuls dominate")
        checks.append((f"(a)/(b) DnD D={depth} vs 1D over P: time ratio", ratio_spread(dnd.times, one_d.times),
                       "<=", 1.15))
        speedup = ratio_spread(long.times, dnd.times)
        checks.append((f"(c)/(a) 1D over P*D vs DnD D={depth}: speed-up", speedup, ">=", 0.8 * depth))
    checks.append((f"(d) uncached/cached at P={Pu}: speed-up", ratio_spread(uncached.times, cached.times),
                   ">=", 10.0))
    print()
    for label, spread, op, bound in checks:
        print(check_line(label, spread, op, bound))
    if args.mfu:
        print(f"\ntraining-step MFU: {training_mfu(args, first_depth)}")


if __name__ == "__main__":
    main()
