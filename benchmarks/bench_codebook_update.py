"""The codebook update rules compared: sequential (one EMA update and restart per depth, the authors')
against pooled (one update per batch from all depths), same config, steps and seed.

    python benchmarks/bench_codebook_update.py --images results/data/classes --tokenizer cls_d4 [--steps 300]

Trains the demo config's tokenizer (`config/config.yaml`, `tokenizers.<name>`) once per rule on the given
image shards (the output of `prepare_images`), then reports the test split's L2 and code usage (fraction
of the codebook used, and the code entropy in bits) at each depth, measured as Table 1a measures them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnd.data.images import ImageShardDataset  # noqa: E402
from dnd.stages.recon import code_usage  # noqa: E402
from dnd.tokenizer.rqvae import load_tokenizer  # noqa: E402
from dnd.tokenizer.train import TokenizerSpec, train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def measure(model_path: Path, images: Path, resolution: int) -> dict:
    model = load_tokenizer(model_path)
    data = ImageShardDataset([images], "test", model.config.in_channels, resolution)
    batch = torch.stack([data[i] for i in range(len(data))])
    with torch.no_grad():
        codes = model.encode(batch)
        l2 = float(((model.decode(codes).clamp(-1, 1) - batch) ** 2).mean())
    counts = np.stack([np.bincount(codes[..., d].flatten().numpy(), minlength=model.config.codebook_size)
                       for d in range(codes.shape[-1])])
    usage, entropy = code_usage(counts)
    return {"n_images": len(data), "l2": l2, "code_usage": usage, "code_entropy_bits": entropy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="image shards with train/val/test splits")
    parser.add_argument("--tokenizer", default="cls_d4", help="a tokenizer of config/config.yaml")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["tokenizers"][args.tokenizer]
    train = {**raw["train"], "seed": args.seed, **({"steps": args.steps} if args.steps else {})}
    train["eval_every"] = train["steps"]  # compare the last steps, not two different best steps
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for rule in ("sequential", "pooled"):
            spec = TokenizerSpec.from_dict(args.tokenizer, {**raw, "train": train,
                                                            "model": {**raw["model"], "codebook_update": rule}})
            out = Path(scratch) / rule / "model.pt"
            start = time.perf_counter()
            train_tokenizer(spec, [args.images], out, Path(scratch) / f"{rule}-work")
            results[rule] = {"seconds": round(time.perf_counter() - start, 1), **measure(out, args.images, train["resolution"])}
    print(json.dumps({"tokenizer": args.tokenizer, "steps": train["steps"], "seed": args.seed, **results}, indent=1))
    for rule, r in results.items():
        usage = " ".join(f"{u:.0%}" for u in r["code_usage"])
        entropy = " ".join(f"{e:.2f}" for e in r["code_entropy_bits"])
        print(f"{rule:>10}: L2 {r['l2']:.4f}  usage by depth {usage}  entropy (bits) {entropy}  ({r['seconds']} s)")


if __name__ == "__main__":
    main()
