"""An exponential moving average of the weights (``train.ema``), the weights a long run hands out.

After every optimiser step each floating-point tensor of the model's state (parameters and buffers such as
BatchNorm's running statistics) moves towards the model's: ``avg = d·avg + (1 - d)·w`` with
``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first updates follow the weights closely
instead of dragging the random initialisation along. Integer buffers (BatchNorm's ``num_batches_tracked``)
are copied. The average is kept in float32 on the model's device; at the default model's 2.7 M parameters
one update costs a few hundred microseconds, well under 1 % of a CPU step.

Training with a high learning rate (the peak of a one-cycle schedule) leaves the raw weights noisy; their
average reads better at every point of the run and at its end (docs/benchmarks.md measures it per run:
the trainer validates both). The trainer validates, picks ``best.pt`` by, and writes ``best.pt`` and the
snapshots with the averaged weights; ``last.pt`` holds the raw weights plus the average, so a resumed run
continues both exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """The moving average of ``model``'s state (see the module docstring).

    Args:
        model: the network whose ``state_dict()`` is averaged (the same module object throughout).
        decay: the long-run decay ``d`` in ``(0, 1)``, e.g. 0.999 (an average over about 1,000 steps).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must lie in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.state = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                      for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """``d`` of the next update: ``min(decay, (1 + n) / (10 + n))``."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current state."""
        d = self.current_decay()
        for k, v in model.state_dict().items():
            avg = self.state[k]
            if avg.is_floating_point():
                avg.lerp_(v.detach().float(), 1.0 - d)
            else:
                avg.copy_(v)
        self.updates += 1

    def averaged_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The average as a state dict of ``model``'s dtypes (what an inference checkpoint stores)."""
        return {k: self.state[k].to(v.dtype) for k, v in model.state_dict().items()}

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Inside the block ``model`` holds the averaged weights; its own are put back afterwards (bit for
        bit, also when the block raises)."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged_state(model))
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, object]:
        """What ``last.pt`` keeps to resume the average exactly."""
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict[str, object]) -> None:
        """Restore :meth:`state_dict` (the decay is the run's config, not the file's)."""
        state = saved["state"]
        assert isinstance(state, dict)
        missing = set(self.state) ^ set(state)
        if missing:
            raise KeyError(f"the saved weight average does not match the model (keys {sorted(missing)[:5]})")
        for k, v in state.items():
            self.state[k].copy_(v)
        self.updates = int(saved["updates"])  # type: ignore[arg-type]
