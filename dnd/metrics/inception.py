"""The one Inception-v3 feature extractor behind every FID, IS and precision/recall of the project.

We use torch-fidelity's `FeatureExtractorInceptionV3`: a PyTorch port of the TensorFlow FID Inception
graph (2015-12-05 weights, TF1-style bilinear resize to 299 px, inputs scaled as (x - 128) / 128). It is
the network behind TTUR's FID, `pytorch-fid` and the ADM evaluator, so our numbers are comparable to
theirs, though not bit-identical to the TensorFlow graph (see `dnd.metrics.adm`).

The weights come from one local file, the setting `metrics.inception_weights` (torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`, a plain state dict). Nothing is ever downloaded: without
that file, `load_inception` raises `InceptionWeightsMissing` and callers report the metric as n/a.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import repeat
from torch_fidelity import __version__ as torch_fidelity_version
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

from dnd.provenance import file_sha256

WEIGHTS_SETTING = "metrics.inception_weights"
WEIGHTS_FILE_NAME = Path(URL_INCEPTION_V3).name
# torch-fidelity's feature names -> ours. "2048" is pool_3 (FID, precision/recall); "logits_unbiased" is
# pool_3 @ W of the 1008-way classifier without its bias, the logits the TF Inception Score uses.
FEATURES = {"2048": "pool", "logits_unbiased": "logits_unbiased"}


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights file is not configured or not on disk."""


class InceptionExtractor:
    """Inception-v3 features of uint8 images of any size (resized to 299 px inside the network)."""

    def __init__(self, network: FeatureExtractorInceptionV3, weights_path: Path, device: torch.device):
        self.network = network
        self.weights_path = weights_path
        self.device = device
        self._weights_sha256: str | None = None

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (B, 3 or 1, H, W) uint8 in [0, 255] -> {"pool": (B, 2048), "logits_unbiased": (B, 1008)}.

        Grayscale images are repeated to three channels. Outputs are float32 on the CPU.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (B, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = repeat(images, "b 1 h w -> b c h w", c=3)
        outputs = self.network(images.to(self.device))
        return {ours: out.float().cpu() for ours, out in zip(FEATURES.values(), outputs)}

    @property
    def provenance(self) -> dict[str, str]:
        if self._weights_sha256 is None:
            self._weights_sha256 = file_sha256(self.weights_path)
        return {
            "feature_extractor": f"torch-fidelity {torch_fidelity_version} FeatureExtractorInceptionV3 "
            "(PyTorch port of the TF FID Inception graph)",
            "inception_weights": str(self.weights_path),
            "inception_weights_sha256": self._weights_sha256,
        }


def check_weights_path(weights_path: str | Path | None) -> Path:
    if weights_path is None or str(weights_path) == "":
        raise InceptionWeightsMissing(
            f"FID/IS/precision/recall need Inception-v3 weights: set {WEIGHTS_SETTING} to a local copy of "
            f"torch-fidelity's {WEIGHTS_FILE_NAME} (published at {URL_INCEPTION_V3}); nothing is downloaded"
        )
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise InceptionWeightsMissing(
            f"{WEIGHTS_SETTING} points to {path}, which does not exist; place torch-fidelity's "
            f"{WEIGHTS_FILE_NAME} there (published at {URL_INCEPTION_V3})"
        )
    return path


def load_inception(weights_path: str | Path | None, device: str | torch.device = "cpu") -> InceptionExtractor:
    """Build the extractor from the local weights file; raises InceptionWeightsMissing without one."""
    path = check_weights_path(weights_path)
    network = FeatureExtractorInceptionV3(
        "inception-v3-compat", list(FEATURES), feature_extractor_weights_path=str(path)
    )
    device = torch.device(device)
    return InceptionExtractor(network.to(device), path, device)
