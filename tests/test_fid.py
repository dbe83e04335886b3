import numpy as np
import pytest
import torch

from dnd.metrics.adm import read_adm_batch, reference_from_adm_batch, write_adm_batch
from dnd.metrics.fid import (
    FeatureStats,
    Reference,
    compute_stats,
    _squared_distances,
    evaluate_images,
    frechet_distance,
    frechet_na_reason,
    inception_chunks,
    inception_score,
    precision_recall,
)
from dnd.metrics.bootstrap import BootstrapSettings, fid_interval, fraction_interval, frechet_distance_psd
from dnd.metrics.inception import WEIGHTS_SETTING, InceptionWeightsMissing, load_inception


@pytest.fixture(scope="module")
def extractor(random_weights):
    return load_inception(random_weights, device="cpu")


def random_images(seed: int, n: int = 6, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # (N, H, W, 3)


def test_missing_weights_name_the_setting(tmp_path):
    with pytest.raises(InceptionWeightsMissing, match=WEIGHTS_SETTING):
        load_inception(None)
    with pytest.raises(InceptionWeightsMissing, match=WEIGHTS_SETTING):
        load_inception(tmp_path / "absent.pth")


def test_loader_uses_the_weights_file(extractor, random_weights):
    saved = torch.load(random_weights)
    name = "Mixed_7c.branch_pool.conv.weight"
    assert torch.equal(extractor.network.state_dict()[name], saved[name])
    gray = torch.from_numpy(random_images(1, n=2)[..., 0])[:, None]  # (2, 1, H, W)
    feats = extractor.features(gray)
    assert feats["pool"].shape == (2, 2048) and feats["logits_unbiased"].shape == (2, 1008)
    assert feats["pool"].std(dim=0).mean() > 0  # distinct images, distinct features
    rgb = extractor.features(gray.expand(-1, 3, -1, -1).contiguous())
    torch.testing.assert_close(rgb["pool"], feats["pool"])  # grayscale is repeated to 3 channels
    assert extractor.provenance["inception_weights"] == str(random_weights)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 6 images in 2048 dimensions: expected
def test_adm_batch_round_trip_and_end_to_end_evaluation(extractor, tmp_path):
    images, labels = random_images(2), np.arange(6)
    ref_path = tmp_path / "ref.npz"
    # A reference batch as the ADM evaluator ships them: images, labels and TF-precomputed statistics.
    np.savez(
        ref_path, arr_0=images, arr_1=labels, mu=np.ones(2048), sigma=np.eye(2048), mu_s=np.zeros(7), sigma_s=np.eye(7)
    )
    batch = read_adm_batch(ref_path)
    assert (batch.num_images, batch.image_shape) == (6, (48, 48, 3))
    np.testing.assert_array_equal(batch.labels, labels)
    np.testing.assert_array_equal(batch.pool_stats.mu, np.ones(2048))
    assert batch.spatial_stats.sigma.shape == (7, 7)
    np.testing.assert_array_equal(np.concatenate(list(batch.iter_images(4))), images)

    precomputed = reference_from_adm_batch(ref_path, extractor, batch_size=3, use_precomputed_stats=True)
    np.testing.assert_array_equal(precomputed.stats.mu, np.ones(2048))
    assert "precomputed" in precomputed.provenance["reference_stats"]

    sample_path = tmp_path / "samples.npz"
    write_adm_batch(sample_path, images, labels)
    reference = reference_from_adm_batch(sample_path, extractor, batch_size=4)
    assert reference.features.shape == (6, 2048)
    saved_path = tmp_path / "reference.npz"
    reference.save(saved_path)
    reloaded = Reference.load(saved_path)
    np.testing.assert_array_equal(reloaded.features, reference.features)
    assert reloaded.provenance == reference.provenance

    result = evaluate_images(read_adm_batch(sample_path).iter_images(4), extractor, reloaded, is_split_size=4,
                             bootstrap=BootstrapSettings(resamples=5))
    assert result["n"] == 6 and result["n_reference"] == {"fid": 6, "precision_recall": 6}
    # 6 images in 2048 dimensions: no Fréchet distance, and the reason says why
    assert result["fid"] is None and "6 sample images" in result["fid_na_reason"]
    assert (result["precision"], result["recall"]) == (1.0, 1.0)
    assert result["is"] >= 1.0 - 1e-9
    assert result["intervals"]["fid"] is None and result["intervals"]["precision"] == [1.0, 1.0]
    low, high = result["intervals"]["is"]
    assert 1.0 - 1e-9 <= low <= high
    provenance = result["provenance"]
    assert provenance["is_chunks"] == [4, 2] and provenance["precision_recall_distance_dtype"] == "float16"
    assert provenance["inception_weights"] == str(extractor.weights_path)
    assert provenance["reference"]["reference_batch"] == str(sample_path)
    assert "not bit-identical" in provenance["comparability"]


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(3)
    d = 16
    feats = rng.normal(size=(200, d))
    stats = compute_stats(feats)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)
    shifted = compute_stats(feats + 0.5)
    assert frechet_distance(stats, shifted) == pytest.approx(d * 0.25, rel=1e-6)  # only the means move
    wide, narrow = FeatureStats(np.zeros(d), 4.0 * np.eye(d), 1), FeatureStats(np.zeros(d), np.eye(d), 1)
    assert frechet_distance(wide, narrow) == pytest.approx(d * (2.0 - 1.0) ** 2)  # d (s_a - s_b)^2
    # Fewer samples than dimensions: a singular covariance still gives a finite, near-zero self-distance.
    few = compute_stats(rng.normal(size=(5, 64)))
    assert abs(frechet_distance(few, few)) < 1e-6 * np.trace(few.sigma)


def test_feature_stats_round_trip(tmp_path):
    stats = compute_stats(np.random.default_rng(4).normal(size=(10, 3)))
    stats.save(tmp_path / "stats.npz")
    loaded = FeatureStats.load(tmp_path / "stats.npz")
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.n == 10


def test_inception_score_extremes():
    confident_one_class = np.zeros((40, 1008))
    confident_one_class[:, 7] = 50.0
    assert inception_score(confident_one_class, split_size=10) == pytest.approx(1.0, abs=1e-6)
    ten_classes = np.zeros((40, 1008))
    ten_classes[np.arange(40), np.arange(40) % 10] = 50.0
    assert inception_score(ten_classes, split_size=10) == pytest.approx(10.0, rel=1e-3)


def adm_inception_score(logits: np.ndarray, split_size: int) -> float:
    """The ADM evaluator's rule restated: softmax, then consecutive parts of split_size, the last partial."""
    preds = np.exp(logits - logits.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    scores = []
    for start in range(0, len(preds), split_size):
        part = preds[start : start + split_size]
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def test_inception_score_chunks_follow_the_adm_evaluator():
    assert [c.stop - c.start for c in inception_chunks(12_000)] == [5000, 5000, 2000]
    assert [c.stop - c.start for c in inception_chunks(50_000)] == [5000] * 10
    # 12,000 confident predictions: chunk 1 one class (IS 1), chunk 2 two classes (IS 2), the last partial
    # chunk of 2,000 four classes (IS 4) -> the mean of the three chunks, not of 10 equal splits
    classes = np.concatenate([np.zeros(5000, int), np.arange(5000) % 2, np.arange(2000) % 4])
    logits = np.zeros((12_000, 6))
    logits[np.arange(12_000), classes] = 40.0
    assert inception_score(logits) == pytest.approx((1 + 2 + 4) / 3, rel=1e-6)
    assert inception_score(logits) == pytest.approx(adm_inception_score(logits, 5000), rel=1e-9)
    random_logits = np.random.default_rng(0).normal(scale=3.0, size=(12_000, 8))
    assert inception_score(random_logits) == pytest.approx(adm_inception_score(random_logits, 5000), rel=1e-9)


def test_frechet_distance_is_na_at_or_below_the_feature_dimension():
    assert "2048 sample images" in frechet_na_reason(2048, None) and "at least 2049" in frechet_na_reason(2048, None)
    assert frechet_na_reason(2049, None) is None  # precomputed reference statistics: only the samples count
    assert "100 reference images" in frechet_na_reason(50_000, 100)
    assert frechet_na_reason(5, 6, dim=4) is None


def test_bootstrap_fid_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    samples, real = rng.normal(size=(400, 4)) + 0.3, rng.normal(size=(500, 4))
    sample_stats, real_stats = compute_stats(samples), compute_stats(real)
    fid = frechet_distance(sample_stats, real_stats)
    # the eigenvalue form used for resamples agrees with scipy's sqrtm
    sqrt_real = torch.as_tensor(np.real(__import__("scipy").linalg.sqrtm(real_stats.sigma)))
    assert frechet_distance_psd(torch.as_tensor(sample_stats.mu), torch.as_tensor(sample_stats.sigma),
                                torch.as_tensor(real_stats.mu), sqrt_real,
                                torch.as_tensor(np.trace(real_stats.sigma))) == pytest.approx(fid, rel=1e-8)
    settings = BootstrapSettings(resamples=50, seed=3)
    for reference_feats in (None, real):  # fixed (precomputed) reference statistics, or resampled with the samples
        low, high = fid_interval(samples, real_stats, reference_feats, settings)
        assert low < fid < high and high - low < 1.0
        assert fid_interval(samples, real_stats, reference_feats, settings) == [low, high]
    assert fid_interval(samples, real_stats, None, BootstrapSettings(resamples=50, seed=4)) != [low, high]
    members = np.arange(1000) < 300
    low, high = fraction_interval(members, settings, "precision")
    assert low < 0.3 < high


def test_float16_distances_as_adm_with_the_float32_fallback():
    rng = np.random.default_rng(6)
    u, v = torch.as_tensor(rng.random((20, 64))), torch.as_tensor(rng.random((30, 64)))
    half, single = _squared_distances(u, v, "float16"), _squared_distances(u, v, "float32")
    assert half.dtype == torch.float32 and not torch.equal(half, single)  # rounded to float16
    torch.testing.assert_close(half, single, rtol=2e-2, atol=1e-2)
    big = u * 1000  # squared norms ~ 2e7 overflow float16: the block is redone in float32, as ADM's DistanceBlock
    torch.testing.assert_close(_squared_distances(big, big, "float16"), _squared_distances(big, big, "float32"))
    with pytest.raises(ValueError, match="float16"):
        _squared_distances(u, v, "bfloat16")


def test_precision_recall_sanity():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(64, 32))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    far = rng.normal(size=(48, 32)) + 100.0
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    mixed = np.concatenate([rng.normal(size=(30, 32)), far[:20]])
    # Blocked distance computation agrees with one block.
    assert precision_recall(real, mixed, k=3, batch_size=7) == precision_recall(real, mixed, k=3, batch_size=4096)
    precision, _ = precision_recall(real, mixed, k=3)
    assert precision <= 30 / 50  # the far samples are never inside the real manifold
    assert precision_recall(real, far, k=3, distance_dtype="float16") == (0.0, 0.0)


def test_a_streamed_adm_batch_holds_what_its_parts_announce(tmp_path):
    from dnd.metrics.adm import write_adm_batch_from_parts

    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), np.full(n, i)) for i, n in enumerate((3, 0, 2))]
    write_adm_batch_from_parts(tmp_path / "ok.npz", iter(parts), 5, (4, 4, 3))
    with np.load(tmp_path / "ok.npz") as batch:
        np.testing.assert_array_equal(batch["arr_0"], np.concatenate([images for images, _ in parts]))
        assert batch["arr_1"].tolist() == [0, 0, 0, 2, 2]
    with pytest.raises(ValueError, match="4 images written, 5 announced"):
        write_adm_batch_from_parts(tmp_path / "short.npz", iter(parts[:1] + [(parts[0][0][:1], [1])]), 5, (4, 4, 3))
    assert not (tmp_path / "short.npz").exists()  # atomic: nothing half-written is left
    with pytest.raises(ValueError, match=r"uint8 \(N, 4, 4, 3\)"):
        write_adm_batch_from_parts(tmp_path / "gray.npz", iter([(np.zeros((1, 4, 4, 1), np.uint8), [0])]), 1, (4, 4, 3))


def test_rfid_below_the_feature_dimension_is_na_and_states_its_counts(random_weights):
    from dnd.stages.recon import ReconEvalConfig, rfid_metrics

    images = random_images(7, n=3, size=16)
    result = rfid_metrics(images, images, ReconEvalConfig(inception_weights=str(random_weights)), torch.device("cpu"))
    assert result["rfid"] is None and result["rfid_na_reason"].startswith("rFID n/a: 3 reconstructed images")
    assert result["rfid_n_reference"] == 3
    assert result["rfid_paper_protocol"] == "not comparable to the paper: 3 test images (paper: 50000, ImageNet val)"
