"""DnD-Transformer family: variants, KV-cached sampling, CFG, sampling rules, authors' checkpoints."""

from __future__ import annotations

import argparse

import pytest
import torch

from dnd.transformer import (
    SamplingConfig,
    Transformer,
    TransformerConfig,
    default_head_layers,
    generate,
    generate_uncached,
    load_authors_checkpoint,
)
from dnd.transformer.generate import DepthRule, apply_guidance, draw_gumbel, filter_logits, sample_codes
from dnd.transformer.model import precompute_rotary_2d

VARIANTS = ["1d", "parallel", "vertical", "dnd"]
VOCAB, GRID, CLASSES = 16, 4, 3


@pytest.fixture(autouse=True)
def restore_rng():
    state = torch.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state)


def make_model(variant: str = "dnd", depth: int | None = None, **overrides) -> Transformer:
    """A tiny eval-mode model whose heads are random (they start at zero, which would make every
    logit equal and every test trivial)."""
    depth = depth or (1 if variant == "1d" else 2)
    config = TransformerConfig.preset(
        "tiny", vocab_size=VOCAB, depth=depth, grid_size=GRID, num_classes=CLASSES, variant=variant, **overrides
    )
    model = Transformer(config)
    for head in model.heads:
        torch.nn.init.normal_(head.output.weight, std=1.0)
    return model.eval()


def random_codes(batch: int, depth: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, GRID, GRID, depth))


SAMPLING = {
    "greedy": SamplingConfig(temperature=0.0),
    "sampled": SamplingConfig(temperature=1.0, seed=7),
    "greedy_cfg": SamplingConfig(temperature=0.0, cfg_scale=3.0),
    "sampled_cfg_linear_topk_topp": SamplingConfig(cfg_scale=2.0, cfg_schedule="linear", top_k=6, top_p=0.9, seed=3),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_sampling_equals_uncached_recomputation(variant):
    model = make_model(variant)
    labels = torch.tensor([0, 2, 1])
    for name, cfg in SAMPLING.items():
        cached = generate(model, labels, cfg)
        assert cached.shape == (3, GRID, GRID, model.config.depth)
        assert torch.equal(cached, generate_uncached(model, labels, cfg)), name
        assert torch.equal(cached, generate(model, labels, cfg)), f"{name}: not deterministic"


def teacher_forced_greedy(model: Transformer, labels: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Greedy CFG decoding from the training forward alone: one full pass per (position, depth).

    Logits at (p, d) see only codes before p and, in "dnd", codes of p shallower than d, so the
    still-unknown entries of `codes` (zeros) cannot leak in.
    """
    depth = model.config.depth
    codes = torch.zeros(len(labels), GRID, GRID, depth, dtype=torch.long)
    null = torch.full_like(labels, CLASSES)
    for p in range(GRID * GRID):
        row, col = divmod(p, GRID)
        for d in range(depth):
            with torch.no_grad():
                cond = model(codes, labels)[:, p, d]
                uncond = model(codes, null)[:, p, d]
            codes[:, row, col, d] = (uncond + cfg_scale * (cond - uncond)).argmax(-1)
    return codes


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_generation_matches_teacher_forced_reference(variant, cfg_scale):
    # cfg_scale 1 is plain conditional decoding; 3 checks the guidance formula at every head and that
    # the guided code is what both halves of the doubled batch see next.
    model = make_model(variant)
    labels = torch.tensor([1, 2])
    sampled = generate(model, labels, SamplingConfig(temperature=0.0, cfg_scale=cfg_scale))
    assert torch.equal(sampled, teacher_forced_greedy(model, labels, cfg_scale))


def test_guidance_at_scale_one_is_the_conditional_logits():
    cond, uncond = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    guided = apply_guidance(torch.cat([cond, uncond]), torch.tensor(1.0))
    torch.testing.assert_close(guided, cond)
    torch.testing.assert_close(apply_guidance(torch.cat([cond, uncond]), torch.tensor(0.0)), uncond)


def test_top_k_top_p_filters_and_exact_draws():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # ranked: 1, 3, 0, 2
    logits = probs.log()[None]

    def kept(top_k: int, top_p: float) -> list[int]:
        return torch.isfinite(filter_logits(logits, top_k, top_p))[0].nonzero().flatten().tolist()

    assert kept(2, 1.0) == [1, 3]
    assert kept(0, 0.5) == [1]  # the smallest set holding at least top_p
    assert kept(0, 0.7) == [1, 3]
    assert kept(0, 0.9) == [0, 1, 3]
    assert kept(1, 0.9) == [1]
    # the Gumbel-max trick draws each code with its probability
    gumbel = draw_gumbel(torch.Generator().manual_seed(0), 1, 40_000, 4, torch.device("cpu"))[0]
    draws = sample_codes(logits.expand(40_000, -1), DepthRule(1.0, 0, 1.0), gumbel)
    torch.testing.assert_close(torch.bincount(draws, minlength=4) / 40_000, probs, rtol=0, atol=0.01)


def test_rotary_table_follows_rows_then_columns():
    head_dim, base = 16, 10000.0
    table = precompute_rotary_2d(GRID, head_dim, base)  # (1 + N, hd/2, 2)
    assert table.shape == (1 + GRID * GRID, head_dim // 2, 2)
    assert torch.equal(table[0], torch.zeros(head_dim // 2, 2))  # the prefix token, as in LlamaGen
    freqs = base ** (-torch.arange(0, head_dim // 2, 2).float() / (head_dim // 2))
    row, col = 2, 3
    angles = torch.cat([row * freqs, col * freqs])
    expected = torch.stack([angles.cos(), angles.sin()], dim=-1)
    torch.testing.assert_close(table[1 + row * GRID + col], expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_causality(variant):
    model = make_model(variant)
    depth = model.config.depth
    codes, labels = random_codes(2, depth), torch.tensor([0, 1])
    logits = model(codes, labels)
    assert logits.shape == (2, GRID * GRID, depth, VOCAB)
    loss, per_depth = model.loss(codes, labels)
    assert per_depth.shape == (depth,) and torch.isclose(loss, per_depth.mean())

    # changing every code from position p + 1 on leaves logits up to position p unchanged
    p = 6
    later = codes.clone().view(2, -1, depth)
    later[:, p + 1 :] = (later[:, p + 1 :] + 1) % VOCAB
    changed = model(later.view_as(codes), labels)
    torch.testing.assert_close(changed[:, : p + 1], logits[:, : p + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(changed[:, p + 2 :], logits[:, p + 2 :])


@pytest.mark.parametrize("variant", ["parallel", "vertical", "dnd"])
def test_depth_conditioning_rule(variant):
    # head 2 at a position reads that position's depth-1 code only in "dnd"
    model = make_model(variant)
    codes, labels = random_codes(2, 2), torch.tensor([0, 1])
    other = codes.clone()
    other[:, 1, 2, 0] = (other[:, 1, 2, 0] + 5) % VOCAB
    position = 1 * GRID + 2
    before, after = model(codes, labels)[:, position], model(other, labels)[:, position]
    torch.testing.assert_close(after[:, 0], before[:, 0], rtol=0, atol=1e-6)  # head 1 never sees its own code
    if variant == "dnd":
        assert not torch.allclose(after[:, 1], before[:, 1])
    else:
        torch.testing.assert_close(after[:, 1], before[:, 1], rtol=0, atol=1e-6)


def test_bf16_model_keeps_fp32_rotary_and_samples():
    model = make_model("dnd").to(torch.bfloat16)
    assert model.rotary.dtype == torch.float32 and model.tok_embeddings.weight.dtype == torch.bfloat16
    codes = generate(model, torch.tensor([0, 1]), SamplingConfig(cfg_scale=2.0))
    assert codes.shape == (2, GRID, GRID, 2) and int(codes.max()) < VOCAB


def test_low_temperature_is_greedy_and_seeds_matter():
    model = make_model("dnd")
    labels = torch.tensor([0, 1, 2])
    greedy = generate(model, labels, SamplingConfig(temperature=0.0))
    assert torch.equal(generate(model, labels, SamplingConfig(temperature=1e-4, seed=5)), greedy)
    first, second = (generate(model, labels, SamplingConfig(temperature=2.0, seed=s)) for s in (1, 2))
    assert not torch.equal(first, second)


@pytest.mark.parametrize(
    "rules",
    [dict(top_k_per_depth=[1, 0]), dict(temperature_per_depth=[0.0, 3.0])],
    ids=["top_k_per_depth", "temperature_per_depth"],
)
def test_per_depth_rules(rules):
    # depth 1 greedy, depth 2 sampled hot: depth-1 codes are the argmax given what was generated
    model = make_model("dnd")
    labels = torch.arange(CLASSES).repeat(4)
    codes = generate(model, labels, SamplingConfig(temperature=3.0, seed=11, **rules))
    with torch.no_grad():
        argmax = model(codes, labels).argmax(-1).view_as(codes)  # (B, h, w, D)
    assert torch.equal(codes[..., 0], argmax[..., 0])
    assert not torch.equal(codes[..., 1], argmax[..., 1])


def test_tiny_model_overfits_a_few_code_maps():
    config = TransformerConfig.preset(
        "tiny", vocab_size=VOCAB, depth=2, grid_size=GRID, num_classes=4, variant="dnd", dim=64,
        class_dropout=0.0, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0,
    )  # fmt: skip
    model = Transformer(config)
    maps, labels = random_codes(4, 2), torch.arange(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(250):
        loss, per_depth = model.loss(maps, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02, per_depth
    assert torch.equal(generate(model, labels, SamplingConfig(temperature=0.0)), maps)


def test_head_layer_defaults_and_validation():
    assert default_head_layers(48, 2) == [39, 47]
    assert default_head_layers(48, 8) == [26, 29, 32, 35, 38, 41, 44, 47]
    assert default_head_layers(48, 4) == [38, 41, 44, 47]
    assert default_head_layers(48, 1) == [47]
    assert TransformerConfig.preset("B", depth=3, variant="parallel").head_layers == [11, 11, 11]
    bad = [
        dict(variant="1d", depth=2),
        dict(variant="parallel", depth=2, head_layers=[0, 1]),
        dict(variant="vertical", depth=2, head_layers=[1, 1]),
        dict(variant="dnd", depth=2, head_layers=[1, 0]),
        dict(variant="dnd", depth=2, head_layers=[0]),
        dict(variant="dnd", depth=1, head_layers=[0]),  # last head must follow the last block
        dict(variant="dnd", depth=2, head_layers=[0, 2]),
        dict(variant="sideways", depth=2),
    ]
    for overrides in bad:
        with pytest.raises(ValueError):
            TransformerConfig.preset("tiny", **overrides)


def test_sampling_input_errors():
    unconditional = Transformer(TransformerConfig.preset("tiny", vocab_size=VOCAB, grid_size=GRID, num_classes=0))
    assert generate(unconditional, 2, SamplingConfig(temperature=0.0)).shape == (2, GRID, GRID, 2)
    with pytest.raises(ValueError, match="class-conditional"):
        generate(unconditional, 2, SamplingConfig(cfg_scale=2.0))
    with pytest.raises(ValueError, match="one value per depth"):
        generate(make_model("dnd"), 1, SamplingConfig(top_k_per_depth=[1]))
    with pytest.raises(ValueError, match="labels"):
        generate(make_model("dnd"), torch.tensor([CLASSES + 1]))


def authors_state_dict(model: Transformer, with_wrappers: bool) -> dict[str, torch.Tensor]:
    """Our weights under the names of the authors' (LlamaGen-style) code, written out by hand."""
    ours = model.state_dict()
    theirs = {
        "tok_embeddings.weight": ours["tok_embeddings.weight"],
        "cls_embedding.embedding_table.weight": ours["class_embedding.weight"],
        "freqs_cis": torch.zeros(1 + GRID * GRID, 8, 2),  # some checkpoints carry it; it is recomputed
    }
    for i in range(model.config.n_layer):
        for name in ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                     "attention_norm", "ffn_norm"):  # fmt: skip
            theirs[f"layers.{i}.{name}.weight"] = ours[f"blocks.{i}.{name}.weight"]
    if model.config.variant == "1d":  # LlamaGen's single head
        theirs["norm.weight"], theirs["output.weight"] = ours["heads.0.norm.weight"], ours["heads.0.output.weight"]
    else:
        for d in range(model.config.depth):
            theirs[f"norm.{d}.weight"] = ours[f"heads.{d}.norm.weight"]
            theirs[f"output.{d}.weight"] = ours[f"heads.{d}.output.weight"]
    prefix = "module._orig_mod." if with_wrappers else ""
    return {prefix + k: v.clone() for k, v in theirs.items()}


@pytest.mark.parametrize("variant", ["dnd", "1d"])
def test_authors_checkpoint_round_trip(tmp_path, variant):
    model = make_model(variant)
    for norm in (p for n, p in model.named_parameters() if n.endswith("norm.weight")):
        torch.nn.init.uniform_(norm, 0.5, 1.5)  # norms away from their init, so a mix-up would show
    codes, labels = random_codes(2, model.config.depth), torch.tensor([2, 0])

    with_args = tmp_path / "with_args.pt"  # the training script's container
    args = argparse.Namespace(image_size=64, downsample_size=16, num_classes=CLASSES, cls_token_num=1,
                              gpt_type="c2i", pred_head_positions="0,1")  # fmt: skip
    torch.save({"model": authors_state_dict(model, False), "steps": 10, "args": args}, with_args)
    bare = tmp_path / "bare.pt"  # an FSDP export: the bare state dict, wrapper prefixes included
    torch.save(authors_state_dict(model, True), bare)

    for path, kwargs in [(with_args, dict(n_head=2)), (bare, dict(n_head=2, grid_size=GRID))]:
        loaded, config = load_authors_checkpoint(path, **kwargs)
        assert (config.variant, config.head_layers, config.grid_size) == (variant, model.config.head_layers, GRID)
        with torch.no_grad():
            assert torch.equal(loaded(codes, labels), model(codes, labels))

    broken = authors_state_dict(model, False)
    broken["layers.0.attention.rope.weight"] = torch.zeros(1)
    torch.save({"model": broken}, tmp_path / "unknown.pt")
    with pytest.raises(KeyError, match="unknown keys"):
        load_authors_checkpoint(tmp_path / "unknown.pt", n_head=2, grid_size=GRID)
    del broken["layers.0.attention.rope.weight"], broken["layers.1.ffn_norm.weight"]
    torch.save({"model": broken}, tmp_path / "missing.pt")
    with pytest.raises(KeyError, match="missing keys"):
        load_authors_checkpoint(tmp_path / "missing.pt", n_head=2, grid_size=GRID)
    with pytest.raises(ValueError, match="grid_size"):
        load_authors_checkpoint(bare, n_head=2)
    misshapen = authors_state_dict(model, False)
    head = "output.weight" if variant == "1d" else "output.0.weight"
    misshapen[head] = torch.zeros(VOCAB + 1, model.config.dim)
    torch.save({"model": misshapen}, tmp_path / "misshapen.pt")
    with pytest.raises(ValueError, match="wrong shape"):
        load_authors_checkpoint(tmp_path / "misshapen.pt", n_head=2, grid_size=GRID)


# ------------------------------------------------------------------ parity with the authors' own layout and forward
# (tests/authors_layout.py restates their code without ours: these fail if our loader or model drifts from theirs)


def test_the_authors_layout_fixture_is_their_shape_rule():
    from authors_layout import authors_shapes, fixture

    spec = fixture()
    args = spec["model_args"]
    shapes = authors_shapes(args["dim"], args["n_layer"], args["vocab_size"], args["num_classes"], args["num_pred_heads"])
    assert {k: list(v) for k, v in shapes.items()} == spec["state_dict"]


def _authors_checkpoint(tmp_path, *, with_ema: bool = False):
    from authors_layout import fixture, random_state

    spec = fixture()
    args = spec["model_args"]
    state = random_state({k: tuple(v) for k, v in spec["state_dict"].items()}, seed=1)
    grid = int(args["block_size"] ** 0.5)
    saved_args = argparse.Namespace(image_size=grid * 16, downsample_size=16, num_classes=args["num_classes"], cls_token_num=1,
                                    gpt_type="c2i", vocab_size=args["vocab_size"],
                                    pred_head_positions=",".join(map(str, args["pred_head_positions"])))  # fmt: skip
    checkpoint = {"model": state, "steps": 1234, "args": saved_args}
    if with_ema:
        checkpoint["ema"] = random_state({k: tuple(v) for k, v in spec["state_dict"].items()}, seed=2)
    path = tmp_path / "authors.pt"
    torch.save(checkpoint, path)
    return path, state, args, grid


def test_our_model_loaded_from_the_authors_layout_gives_their_logits(tmp_path):
    """Every key of their layout is taken (none missing, none left over), and on random weights (norms too)
    our teacher-forced logits equal those of the restatement of their forward, head by head."""
    from authors_layout import authors_forward

    path, state, args, grid = _authors_checkpoint(tmp_path)
    model, config = load_authors_checkpoint(path, n_head=args["n_head"])
    assert (config.depth, config.grid_size, config.head_layers, config.variant) == (2, grid, [1, 2], "dnd")
    assert model.num_params() == sum(t.numel() for t in state.values())
    codes = torch.randint(0, args["vocab_size"], (3, grid, grid, 2))
    labels = torch.tensor([0, 2, args["num_classes"]])  # the last: the null class (CFG's unconditional row)
    with torch.no_grad():
        ours = model(codes, labels)  # (B, N, D, V)
        theirs = authors_forward(state, codes.flatten(1, 2), labels, args["n_head"], args["pred_head_positions"])
    torch.testing.assert_close(ours.permute(0, 2, 1, 3), theirs, rtol=1e-4, atol=1e-4)
    assert theirs.std() > 0.1  # not a trivially equal (zero) output


def test_the_restated_forward_can_tell_a_wrong_load(tmp_path):
    """The parity check is not vacuous: swapping two heads' norms (a plausible mapping slip) breaks it."""
    from authors_layout import authors_forward

    path, state, args, grid = _authors_checkpoint(tmp_path)
    swapped = dict(state)
    swapped["norm.0.weight"], swapped["norm.1.weight"] = state["norm.1.weight"], state["norm.0.weight"]
    torch.save({"model": swapped, "args": torch.load(path, weights_only=False)["args"]}, tmp_path / "swapped.pt")
    model, _ = load_authors_checkpoint(tmp_path / "swapped.pt", n_head=args["n_head"])
    codes, labels = torch.randint(0, args["vocab_size"], (2, grid, grid, 2)), torch.tensor([1, 2])
    with torch.no_grad():
        ours = model(codes, labels).permute(0, 2, 1, 3)
        theirs = authors_forward(state, codes.flatten(1, 2), labels, args["n_head"], args["pred_head_positions"])
    assert not torch.allclose(ours, theirs, atol=1e-3)
