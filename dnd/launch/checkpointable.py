"""Checkpointable jobs: a training stage survives time limits, preemption, `scancel` and requeues.

A stage subclasses `CheckpointableTask` and implements `run()`:

    class TrainTokenizer(CheckpointableTask):
        def __init__(self, cfg, data, work_dir):
            super().__init__(work_dir)
            self.cfg, self.data = cfg, data

        def run(self):
            state = self.load_checkpoint() or fresh_state(self.cfg)     # resume = the same code path
            while state["step"] < self.cfg.steps:
                train_one_step(state)
                if state["step"] % self.cfg.checkpoint_every == 0 or self.stop_requested:
                    self.save_checkpoint(state)
                if self.stop_requested:
                    return None                                         # the base requeues or fails the job
            return summary(state)

    result = run_task("train_tokenizer", TrainTokenizer(cfg, data, work_dir), work_dir)

Signals become a flag checked between steps, so a checkpoint is never written mid-step:
- USR2 (submitit's timeout / preemption warning, `slurm_signal_delay_s` before the limit): after
  `run()` returns, submitit's `checkpoint()` resubmits this same object and SLURM requeues the job;
  the requeued job loads `checkpoint.pt` and continues.
- SIGTERM (`scancel`, `scontrol requeue`, node shutdown): the job raises `Interrupted` after the
  checkpoint, so it is never recorded as a success; a requeued job resumes by itself, a cancelled
  one resumes when the stage is run again.
Only rank 0 writes the checkpoint; every rank sees the flag (SLURM signals all tasks).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Callable

from submitit.helpers import Checkpointable, DelayedSubmission

from dnd.atomic import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"
_Handler = Callable[[int, Any], Any] | int | None


class Interrupted(RuntimeError):
    """The run stopped early on a signal, after saving its checkpoint."""

    def __init__(self, message: str, signals: list[int]):
        super().__init__(message)
        self.signals = signals


def _preemption_signal() -> signal.Signals:
    from submitit import JobEnvironment

    return JobEnvironment._usr_sig()


class _StopSignals:
    """While active: SIGTERM and the preemption signal set a flag instead of acting; the handlers that
    were there before (submitit's) are kept, to hand over to afterwards."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous: dict[int, _Handler] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in (signal.SIGTERM, _preemption_signal()):
                self.previous[sig] = signal.signal(sig, self._flag)
        return self

    def _flag(self, signum: int, frame: Any) -> None:
        print(f"received {signal.Signals(signum).name}: checkpointing after this step", flush=True)
        self.received.append(signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class CheckpointableTask(Checkpointable):
    """`__call__` runs or resumes (from `work_dir/checkpoint.pt`); `checkpoint()` returns the resubmission."""

    def __init__(self, work_dir: Path):
        self.work_dir = Path(work_dir)
        self._signals: _StopSignals | None = None

    # ------------------------------------------------------------ what a stage implements
    def run(self) -> Any:
        """Train from `load_checkpoint()` (None: from scratch); save every few steps and return early,
        after saving, once `stop_requested` is true."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    # ------------------------------------------------------------ what a stage uses
    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / CHECKPOINT_NAME

    @property
    def stop_requested(self) -> bool:
        signals = getattr(self, "_signals", None)
        return bool(signals and signals.received)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Atomically, by rank 0 only (the other ranks hold the same state)."""
        import torch

        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self) -> dict[str, Any] | None:
        import torch

        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    # ------------------------------------------------------------ the submitit protocol
    def __call__(self) -> Any:
        with _StopSignals() as signals:
            self._signals = signals
            try:
                result = self.run()
            finally:
                self._signals = None
        if not signals.received:
            return result
        preemption = _preemption_signal()
        handler = signals.previous.get(preemption)
        if preemption in signals.received and callable(handler):
            handler(preemption, None)  # submitit: checkpoint() → resubmission saved → requeue → exit
        names = ", ".join(signal.Signals(s).name for s in signals.received)
        raise Interrupted(f"{type(self).__name__} stopped on {names}; rerun to resume from its checkpoint", signals.received)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """The same task again: its progress is in `checkpoint.pt`, not in this object."""
        return DelayedSubmission(self, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_signals"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._signals = None


class TrainingTask(CheckpointableTask):
    """A resumable training function under the launcher: `fn(*args, should_stop=...)`.

    The trainers of this project (`dnd.training.run_training`) keep their own checkpoints in their
    work area and return None, after saving, once `should_stop()` turns true; this wrapper gives
    them the launcher's signal flag, so the same code runs in-process, under SLURM, and requeued.
    """

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], work_dir: Path, **kwargs: Any):
        super().__init__(work_dir)
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def run(self) -> Any:
        return self.fn(*self.args, should_stop=lambda: self.stop_requested, **getattr(self, "kwargs", {}))
