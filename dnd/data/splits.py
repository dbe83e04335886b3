"""Train/val/test assignment by a stable hash of a group key (article title, paper id).

A group never straddles splits, and adding or removing other groups never moves it: the hash of
its key alone decides, except (a) the cap on the test (and val) split size, which moves the groups
with the largest hash beyond the cap into train, and (b) a tiny data set whose asked-for split
came out empty, which gets the train group with the smallest hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.05  # share of groups (articles, papers) in val, by hash
    test_fraction: float = 0.05  # share of groups in test, by hash
    test_max_images: int | None = 1000  # cap on test images (the paper: 1K); overflow groups go to train
    val_max_images: int | None = None  # cap on val images; None = no cap


def key_hash(key: str) -> int:
    """A 64-bit hash of the key, stable across runs, machines and Python versions."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")


def unit_interval(key: str) -> float:
    return key_hash(key) / 2**64


def assign_splits(image_counts: dict[str, int], cfg: SplitConfig) -> dict[str, str]:
    """Map every group key to "train", "val" or "test" given how many images each group has."""
    ranked = sorted(image_counts, key=lambda k: (unit_interval(k), k))
    splits: dict[str, str] = {}
    used = {"test": 0, "val": 0}
    caps = {"test": cfg.test_max_images, "val": cfg.val_max_images}
    for key in ranked:
        u = unit_interval(key)
        if u < cfg.test_fraction:
            wanted = "test"
        elif u < cfg.test_fraction + cfg.val_fraction:
            wanted = "val"
        else:
            wanted = "train"
        if wanted != "train":
            cap = caps[wanted]
            if cap is not None and used[wanted] + image_counts[key] > cap:
                wanted = "train"
            else:
                used[wanted] += image_counts[key]
        splits[key] = wanted
    _fill_empty_splits(splits, image_counts, cfg, caps)
    return splits


def _fill_empty_splits(splits: dict[str, str], image_counts: dict[str, int], cfg: SplitConfig, caps: dict) -> None:
    """A small data set can leave a split with a positive fraction empty by chance: give it the
    train group nearest to its hash range (deterministic), so every asked-for split has data."""
    for split, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if fraction <= 0 or split in splits.values():
            continue
        train = sorted((k for k, s in splits.items() if s == "train"), key=lambda k: (unit_interval(k), k))
        fitting = [k for k in train if caps[split] is None or image_counts[k] <= caps[split]]
        if len(train) > 1 and fitting:
            splits[fitting[0]] = split
