"""One table of what a GPU does with this code at the paper's scale (run through benchmarks/gpu_check.sh).

Rows, each measured on random weights (speed does not depend on them):
  train   the XXL DnD training step (depth 2, 16×16 positions, bf16 autocast, torch.compile, fused AdamW):
          seconds per step and MFU (PaLM's FLOP count: 6 per matmul weight per token + causal attention)
  sample  DnD-XXL (D=2) and 1D-XXL (LlamaGen) sampling 256 positions at batch 256 with classifier-free
          guidance (512 sequences through the model), compiled cached decode step: images/s, the
          DnD/1D time ratio (median [min, max] over interleaved rounds), and each against its floor: a
          decode step cannot take less than max(bytes it reads / HBM bandwidth, FLOPs / bf16 peak), the
          bytes being the weights it multiplies plus the KV cache it attends over
  ddp / fsdp  the B (DDP) and XXL (FSDP) training step over every GPU present: n/a below two GPUs
  tokenizer   the paper's RQ-VAE (paper_f16, 256 px, depth 2): encode and decode images/s, bf16 autocast
  resume  the training loop on this device (bf16 autocast, fused AdamW, EMA, the per-rank RNG state in the
          checkpoint): a tiny transformer stopped half-way and resumed ends with the weights of an
          uninterrupted run (deterministic kernels, in a process of its own so the timed rows are not slowed)

`--smoke` runs every row at toy sizes on any device (the test suite runs it on CPU); its numbers mean
nothing beyond "the code path works".
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.models import matmul_weights, sampling_ready_transformer, sync  # noqa: E402
from benchmarks.timing import Spread, ratio_spread, seconds_of, time_interleaved  # noqa: E402
from dnd.tokenizer.rqvae import RQVAE, rqvae_config  # noqa: E402
from dnd.transformer import SamplingConfig, Transformer, TransformerConfig, code_cross_entropy, sample_sequence  # noqa: E402

# dense bf16 peak (FLOP/s) and HBM bandwidth (bytes/s) of SXM parts, by name
ACCELERATORS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}


@dataclass(frozen=True)
class Sizes:
    size: str = "XXL"  # transformer preset for the train and sample rows
    ddp_size: str = "B"
    grid: int = 16  # 16×16 positions: ImageNet 256 px through an f=16 tokenizer
    depth: int = 2
    vocab: int = 16384
    train_batch: int = 32
    sample_batch: int = 256
    cfg_scale: float = 4.0
    tokenizer_preset: str = "paper_f16"
    tokenizer_pixels: int = 256
    tokenizer_batch: int = 64
    rounds: int = 3
    steps: int = 10  # training steps per timed round


SMOKE = Sizes(size="tiny", ddp_size="tiny", grid=4, vocab=64, train_batch=2, sample_batch=2,
              tokenizer_preset="demo_f8", tokenizer_pixels=32, tokenizer_batch=2, rounds=2, steps=2)


@dataclass
class Row:
    name: str
    value: str
    detail: str


def limits(device: torch.device) -> tuple[float, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((spec for key, spec in ACCELERATORS.items() if key in name), None)


def transformer(sizes: Sizes, variant: str, depth: int, size: str | None = None) -> Transformer:
    return sampling_ready_transformer(size or sizes.size, sizes.vocab, depth, sizes.grid, variant)


def train_step_fn(model: Transformer, sizes: Sizes, device: torch.device, compile: bool, wrapped=None):
    step_model = wrapped if wrapped is not None else model
    if compile:
        step_model = torch.compile(step_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    codes = torch.randint(0, sizes.vocab, (sizes.train_batch, sizes.grid, sizes.grid, sizes.depth), device=device)
    labels = torch.randint(0, model.config.num_classes, (sizes.train_batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = code_cross_entropy(step_model(codes, labels), codes)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_row(sizes: Sizes, device: torch.device, compile: bool) -> Row:
    model = transformer(sizes, "dnd", sizes.depth).to(device).train()
    step = train_step_fn(model, sizes, device, compile)
    started = time.perf_counter()
    step()  # compilation
    warmup = time.perf_counter() - started
    seconds = Spread.of(time_interleaved({"train": lambda: [step() for _ in range(sizes.steps)]}, sizes.rounds,
                                         lambda: sync(device))["train"])
    per_step = seconds.median / sizes.steps
    tokens = sizes.grid * sizes.grid
    config = model.config
    flops = (6 * matmul_weights(model) + 12 * config.n_layer * config.dim * tokens) * tokens * sizes.train_batch
    spec = limits(device)
    mfu = f"{flops / per_step / spec[0]:.1%} MFU" if spec else "MFU n/a (peak unknown)"
    detail = (f"{sizes.size} DnD D={sizes.depth}, {model.num_params() / 1e9:.2f}B params, batch {sizes.train_batch}"
              f"×{tokens}, bf16 autocast{', compiled' if compile else ''}, fused AdamW; "
              f"{flops / per_step / 1e12:.0f} TFLOP/s; per step [min, max] "
              f"{seconds.low / sizes.steps * 1e3:.0f}–{seconds.high / sizes.steps * 1e3:.0f} ms; "
              f"first step (compile) {warmup:.0f} s")
    del model, step
    return Row(f"train step {sizes.size}", f"{per_step * 1e3:.0f} ms/step, {mfu}", detail)


def step_floor(model: Transformer, sequences: int, positions: int, device: torch.device) -> float | None:
    """Seconds an image set's P decode steps take at least on this accelerator (bf16 weights and cache)."""
    spec = limits(device)
    if spec is None:
        return None
    peak, bandwidth = spec
    config = model.config
    cache_len = -(-positions // 8) * 8  # setup_caches' static length: every step attends over all of it
    kv_bytes = sequences * config.n_layer * 2 * cache_len * config.dim * 2
    weight_bytes = matmul_weights(model) * 2
    flops = 2 * matmul_weights(model) * sequences + 4 * sequences * config.n_layer * cache_len * config.dim
    return positions * max((weight_bytes + kv_bytes) / bandwidth, flops / peak)


def sample_rows(sizes: Sizes, device: torch.device, compile: bool) -> list[Row]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    positions = sizes.grid * sizes.grid
    cfg = SamplingConfig(temperature=1.0, cfg_scale=sizes.cfg_scale)
    labels = torch.randint(0, TransformerConfig.num_classes, (sizes.sample_batch,), device=device)
    models = {"dnd": transformer(sizes, "dnd", sizes.depth), "1d": transformer(sizes, "1d", 1)}
    calls = {}
    for name, model in models.items():
        model.to(device=device, dtype=dtype).eval()
        calls[name] = lambda model=model: sample_sequence(model, labels, cfg, compile=compile)
    sequences = sizes.sample_batch * (2 if cfg.guided else 1)
    with torch.inference_mode():
        times = time_interleaved(calls, sizes.rounds, lambda: sync(device))
    rows = []
    for name, model in models.items():
        spread = Spread.of(times[name])
        floor = step_floor(model, sequences, positions, device)
        vs_floor = f"{floor / spread.median:.0%} of its floor ({sizes.sample_batch / floor:.0f} images/s)" if floor else \
            "floor n/a (bandwidth unknown)"
        rows.append(Row(
            f"sample {'DnD' if name == 'dnd' else '1D'}-{sizes.size}" + (f" D={sizes.depth}" if name == "dnd" else ""),
            f"{sizes.sample_batch / spread.median:.1f} images/s",
            f"{positions} positions × batch {sizes.sample_batch}, CFG {sizes.cfg_scale} ({sequences} sequences), "
            f"{'compiled' if compile else 'eager'} cached decode; {spread.median:.2f} s per batch "
            f"[{spread.low:.2f}, {spread.high:.2f}]; {vs_floor}",
        ))
    ratio = ratio_spread(times["dnd"], times["1d"])
    weights = matmul_weights(models["dnd"]) / matmul_weights(models["1d"])
    rows.append(Row("sample DnD/1D time", f"{ratio}", f"median [min, max] over {sizes.rounds} interleaved rounds; "
                    f"paper: ≈ 1 (same cost); DnD multiplies {weights:.3f}× the 1D weights per step"))
    del models, calls
    return rows


def tokenizer_rows(sizes: Sizes, device: torch.device) -> list[Row]:
    model = RQVAE(rqvae_config(sizes.tokenizer_preset, depth=sizes.depth)).to(device).eval()
    images = torch.rand(sizes.tokenizer_batch, model.config.in_channels, sizes.tokenizer_pixels,
                        sizes.tokenizer_pixels, device=device) * 2 - 1
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        codes = model.encode(images)
        times = time_interleaved({"encode": lambda: model.encode(images), "decode": lambda: model.decode(codes)},
                                 sizes.rounds, lambda: sync(device))
    return [Row(f"tokenizer {what}", f"{sizes.tokenizer_batch / Spread.of(t).median:.0f} images/s",
                f"{sizes.tokenizer_preset}, {sizes.tokenizer_pixels} px, depth {sizes.depth}, batch "
                f"{sizes.tokenizer_batch}, bf16 autocast on GPU; s/batch {Spread.of(t)}")
            for what, t in times.items()]


def _distributed_worker(rank: int, world: int, mode: str, sizes: Sizes, port: int, queue) -> None:
    import torch.distributed as dist

    from dnd.transformer.parallel import parallelize

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=rank, world_size=world)
    try:
        size = sizes.ddp_size if mode == "ddp" else sizes.size
        torch.manual_seed(0)
        model = transformer(sizes, "dnd", sizes.depth, size).to(device).train()
        wrapped = parallelize(model, mode, device)
        step = train_step_fn(model, sizes, device, compile=False, wrapped=wrapped)
        step()
        dist.barrier()
        seconds = [seconds_of(lambda: [step() for _ in range(sizes.steps)], lambda: sync(device)) / sizes.steps
                   for _ in range(sizes.rounds)]
        if rank == 0:
            queue.put((size, model.num_params(), seconds))
    finally:
        dist.destroy_process_group()


def distributed_row(mode: str, sizes: Sizes, world: int) -> Row:
    if world < 2:
        return Row(f"{mode} step", "n/a", f"needs two or more GPUs; {world} present")
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = 29500 + os.getpid() % 1000
    mp.spawn(_distributed_worker, args=(world, mode, sizes, port, queue), nprocs=world, join=True)
    size, params, seconds = queue.get()
    spread = Spread.of(seconds)
    maps = sizes.train_batch * world
    return Row(f"{mode} step {size}", f"{spread.median * 1e3:.0f} ms/step",
               f"{world} ranks × batch {sizes.train_batch} ({maps / spread.median:.0f} code maps/s), "
               f"{params / 1e9:.2f}B params, eager; [min, max] {spread.low * 1e3:.0f}–{spread.high * 1e3:.0f} ms")


RESUME_SPEC = {"tokenizer": "tok", "data": "classes", "size": "tiny", "model": {"variant": "dnd"},
               "train": {"batch_size": 8, "steps": 20, "lr": 3e-3, "eval_every": 10, "checkpoint_every": 5,
                         "eval_batches": 1, "ema_decay": 0.99}}


def _resume_worker(queue) -> None:
    import tempfile

    import numpy as np

    from dnd.data.codes import CodeMapInfo, write_code_shard
    from dnd.transformer.train import TransformerSpec, train_transformer

    torch.use_deterministic_algorithms(True)  # the embedding backward adds with atomics on CUDA
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for split, n in (("train", 48), ("val", 8)):
            labels = [i % 3 for i in range(n)]
            write_code_shard(root / "codes" / split / "shard-00000-of-00001.arrow", [f"{split}{i}" for i in range(n)],
                             rng.integers(0, 64, (n, 4, 4, 2)), labels, CodeMapInfo(4, 4, 2, 64, "tok"))
        spec = TransformerSpec.from_dict("resume", RESUME_SPEC)
        train_transformer(spec, root / "codes", root / "whole" / "model.pt", root / "whole-work")
        calls = iter(range(10**6))
        stopped = train_transformer(spec, root / "codes", root / "split" / "model.pt", root / "split-work",
                                    should_stop=lambda: next(calls) >= 9)
        last = torch.load(root / "split-work" / "checkpoints" / "last.pt", weights_only=False)["step"]
        train_transformer(spec, root / "codes", root / "split" / "model.pt", root / "split-work")
        whole, split = (torch.load(root / name / "model.pt", weights_only=False) for name in ("whole", "split"))
        diff = max((whole["state_dict"][k].float() - v.float()).abs().max().item() for k, v in split["state_dict"].items())
        queue.put((stopped is None, last, whole["step"], split["step"], diff,
                   "cuda" if torch.cuda.is_available() else "cpu"))


def resume_row() -> Row:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    saved = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what deterministic cuBLAS needs, for this process only
    try:
        worker = context.Process(target=_resume_worker, args=(queue,))
        worker.start()
        worker.join()
    finally:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG") if saved is None else os.environ.update(CUBLAS_WORKSPACE_CONFIG=saved)
    if worker.exitcode != 0:
        return Row("resume == uninterrupted", "failed", f"the worker exited with {worker.exitcode} (its traceback above)")
    stopped, last, whole_step, split_step, diff, where = queue.get()
    same = stopped and whole_step == split_step and diff == 0.0
    return Row("resume == uninterrupted", "yes" if same else f"NO (max |Δw| {diff:.3g})",
               f"tiny DnD on {where}, {RESUME_SPEC['train']['steps']} steps, stopped after step {last} and resumed; "
               f"best steps {whole_step} / {split_step}; max |Δ weight| {diff:.3g} (deterministic algorithms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy sizes: check the code paths, on any device")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="eager training step and decode step")
    parser.add_argument("--rows", nargs="+", default=["train", "sample", "ddp", "fsdp", "tokenizer", "resume"],
                        choices=["train", "sample", "ddp", "fsdp", "tokenizer", "resume"])
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else Sizes()
    device = torch.device(args.device)
    compile = not args.no_compile and not args.smoke
    torch.set_float32_matmul_precision("high")
    torch._dynamo.config.cache_size_limit = 64
    torch.manual_seed(0)
    gpus = torch.cuda.device_count() if device.type == "cuda" else (2 if args.smoke else 0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# gpu_check: {where}; torch {torch.__version__}; {'smoke sizes' if args.smoke else 'paper sizes'}",
          flush=True)
    rows: list[Row] = []
    builders = {
        "train": lambda: [train_row(sizes, device, compile)],
        "sample": lambda: sample_rows(sizes, device, compile),
        "ddp": lambda: [distributed_row("ddp", sizes, gpus)],
        "fsdp": lambda: [distributed_row("fsdp", sizes, gpus)],
        "tokenizer": lambda: tokenizer_rows(sizes, device),
        "resume": lambda: [resume_row()],
    }
    for name in args.rows:
        started = time.perf_counter()
        try:
            new = builders[name]()
        except torch.OutOfMemoryError as error:  # a row that does not fit is reported, not fatal
            new = [Row(name, "failed", f"out of memory: {str(error).splitlines()[0]}")]
        for row in new:
            print(f"  {row.name}: {row.value} ({time.perf_counter() - started:.0f} s)", flush=True)
        rows += new
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| check | result | how |\n|---|---|---|")
    for row in rows:
        print(f"| {row.name} | {row.value} | {row.detail} |")


if __name__ == "__main__":
    main()
