"""The one training loop (`dnd.training.run_training`) on a toy trainer: resume, code versions, selection, records."""

import json
import logging
import math

import pytest
import torch
from torch import nn

from dnd.training import CheckpointMismatch, LoopConfig, RunInfo, run_training, seed_everything


class ToyTrainer:
    """A linear model with dropout fitted to a fixed target: every step draws from the global RNG
    (dropout masks and the batch), so a resume that loses the RNG state trains other weights."""

    def __init__(self, width: int = 8, val_losses: list[float] | None = None):
        seed_everything(0)
        self.model = nn.Sequential(nn.Dropout(0.5), nn.Linear(width, width))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.target = torch.eye(width)
        self.val_losses = list(val_losses or [])
        self.exported = None

    def state_dict(self):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def train_step(self, step):
        x = torch.randn(4, self.target.shape[0])
        loss = ((self.model(x) - x @ self.target) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def validate(self, step):
        return {"val/loss": self.val_losses.pop(0)} if self.val_losses else None

    def export(self, checkpoint, out):
        self.exported = checkpoint["step"]
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint["model"], out)
        return {"exported_step": checkpoint["step"]}


def _run(tmp_path, name, trainer=None, stop_after=None, code_version="v1", steps=10, eval_every=None):
    trainer = trainer or ToyTrainer()
    calls = iter(range(1, 10**6))
    should_stop = (lambda: next(calls) == stop_after) if stop_after else (lambda: False)
    loop = LoopConfig(steps=steps, checkpoint_every=4, eval_every=eval_every, seed=0)
    run = RunInfo("toy", "train_toy", {"width": 8}, code_version=code_version)
    result = run_training(trainer, loop, run, tmp_path / f"{name}-work", tmp_path / name / "model.pt", should_stop)
    return trainer, result


def _weights(tmp_path, name):
    return torch.load(tmp_path / f"{name}-work" / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_a_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    _run(tmp_path, "whole")
    _, stopped = _run(tmp_path, "resumed", stop_after=5)
    assert stopped is None and not (tmp_path / "resumed" / "model.pt").exists()
    assert torch.load(tmp_path / "resumed-work" / "checkpoints" / "last.pt", weights_only=False)["step"] == 5
    _, summary = _run(tmp_path, "resumed")
    assert summary["best_step"] == 10 and summary["selected_by"] == "last step"
    whole, resumed = _weights(tmp_path, "whole"), _weights(tmp_path, "resumed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # exact: same draws, same order

    # Control: the same resume without the saved RNG state trains other weights, so the test can fail.
    checkpoint = tmp_path / "control-work" / "checkpoints" / "last.pt"
    _run(tmp_path, "control", stop_after=5)
    state = torch.load(checkpoint, weights_only=False)
    state["rng"] = None  # a checkpoint without RNG states: the loop reseeds
    torch.save(state, checkpoint)
    _run(tmp_path, "control")
    control = _weights(tmp_path, "control")
    assert not all(torch.equal(whole[k], control[k]) for k in whole)


def test_the_output_carries_provenance_and_a_summary(tmp_path):
    _, summary = _run(tmp_path, "recorded", code_version="abc123")
    record = json.loads((tmp_path / "recorded" / "model.pt.provenance.json").read_text())
    assert record["stage"] == "train_toy" and record["code_version"] == "abc123"
    assert record["config"] == {"width": 8} and record["summary"]["best_step"] == 10
    assert json.loads((tmp_path / "recorded" / "train_summary.json").read_text()) == summary
    checkpoint = torch.load(tmp_path / "recorded-work" / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["code_version"] == "abc123" and len(checkpoint["rng"]) == 1  # one state per rank


def test_the_best_validation_step_is_the_result(tmp_path):
    trainer = ToyTrainer(val_losses=[3.0, 1.0, 2.0, 5.0, 4.0])
    trainer, summary = _run(tmp_path, "best", trainer=trainer, eval_every=2)
    assert summary["best_step"] == 4 and summary["best_val_loss"] == 1.0 and summary["selected_by"] == "val/loss"
    assert trainer.exported == 4


class TwoFigureTrainer(ToyTrainer):
    """Validation reports two figures (as raw and EMA weights do); export records both chosen steps."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = list(pairs)

    def validate(self, step):
        main, other = self.pairs.pop(0)
        return {"val/loss": main, "val/other/loss": other}

    def export(self, checkpoint, out, also=None):
        summary = super().export(checkpoint, out)
        self.exported = (checkpoint["step"], {name: state["step"] for name, state in (also or {}).items()})
        return summary


def test_an_extra_selection_keeps_its_own_best_step_and_survives_a_resume(tmp_path):
    pairs = [(3.0, 1.0), (1.0, 2.0), (2.0, 0.5), (5.0, 4.0), (4.0, 3.0)]  # main best at step 4, other at step 6
    trainer = TwoFigureTrainer(pairs)
    loop = LoopConfig(steps=10, checkpoint_every=4, eval_every=2, seed=0, also_select={"other": "val/other/loss"})
    run = RunInfo("toy", "train_toy", {"width": 8})
    calls = iter(range(1, 100))
    assert run_training(trainer, loop, run, tmp_path / "work", tmp_path / "out" / "model.pt", lambda: next(calls) == 7) is None
    resumed = TwoFigureTrainer(pairs[3:])  # the stopped run validated at steps 2, 4 and 6
    summary = run_training(resumed, loop, run, tmp_path / "work", tmp_path / "out" / "model.pt")
    assert resumed.exported == (4, {"other": 6})
    assert summary["best_step"] == 4 and summary["also_selected"] == {
        "other": {"step": 6, "val_loss": 0.5, "selected_by": "val/other/loss"}}


def test_a_resume_across_code_versions_is_logged(tmp_path, caplog):
    _run(tmp_path, "moved", stop_after=3, code_version="old1")
    with caplog.at_level(logging.WARNING, logger="dnd.training"):
        _, summary = _run(tmp_path, "moved", code_version="new2")
    assert summary["best_step"] == 10
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "old1" in warning and "new2" in warning


def test_a_checkpoint_that_does_not_load_names_both_versions_and_fresh(tmp_path):
    _run(tmp_path, "changed", stop_after=3, code_version="old1")
    with pytest.raises(CheckpointMismatch, match=r"old1.*new2.*--fresh"):
        _run(tmp_path, "changed", trainer=ToyTrainer(width=4), code_version="new2")


def test_no_validation_loss_means_no_best_checkpoint(tmp_path):
    _, summary = _run(tmp_path, "plain", eval_every=5)
    assert summary["best_val_loss"] is None and not (tmp_path / "plain-work" / "checkpoints" / "best.pt").exists()
    assert not math.isnan(summary["exported_step"])
