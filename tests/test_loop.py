"""The run loop itself, on a one-layer model: hook order, stopping, the time budget over a resume and across
ranks, and the resume-compatibility check."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from strkit.charset import Charset
from strkit.checkpoint import load_checkpoint
from strkit.config import Config, load_config
from strkit.engine.loop import Hook, ObserveValidation, RunLoop, StopTraining
from strkit.engine.runtime import ResumeError, TimeBudget


def _cfg(out: Path, *extra: str) -> Config:
    return load_config(None, [f"train.out_dir={out}", "train.steps=6", "train.log_every=2", "train.val_every=3",
                              "train.save_every=100", "train.progress=false", "train.tensorboard=false",
                              "train.device=cpu", "train.threads=1", *extra])


class TinyLoop(RunLoop):
    """y = w·x on random batches; validation reports the step."""

    def __init__(self, cfg: Config, resume: Path | None = None, **kwargs) -> None:
        super().__init__(cfg, resume, **kwargs)
        self.model = torch.nn.Linear(2, 1)
        self.model.charset = Charset.preset("36_lowercase")
        self.net = self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.scaler = torch.amp.GradScaler(enabled=False)
        self.resume_state()

    def batches(self) -> Iterator[torch.Tensor]:
        while True:
            yield torch.randn(4, 2)

    def run_step(self, batch: torch.Tensor) -> None:
        self.optimise(self.forward_loss(batch).pow(2).mean())

    def log_row(self) -> dict[str, float]:
        return {"loss": 1.0}

    def validate(self) -> dict[str, float]:
        return {"val_step": float(self.step)}

    def finish(self, reason: str) -> str:
        return reason


class Recorder(Hook):
    def __init__(self, name: str, calls: list[tuple[str, str, int]]) -> None:
        self.name, self.calls = name, calls

    def before_run(self, loop):
        self.calls.append((self.name, "before_run", loop.step))

    def after_backward(self, loop):
        self.calls.append((self.name, "after_backward", loop.step))

    def after_step(self, loop):
        self.calls.append((self.name, "after_step", loop.step))

    def after_log(self, loop, row):
        self.calls.append((self.name, "after_log", int(row["step"])))

    def after_validation(self, loop, metrics):
        self.calls.append((self.name, "after_validation", int(metrics["val_step"])))

    def after_run(self, loop, reason):
        self.calls.append((self.name, f"after_run:{reason}", loop.step))


def test_hooks_are_called_in_order(tmp_path):
    calls: list[tuple[str, str, int]] = []
    loop = TinyLoop(_cfg(tmp_path / "run"), hooks=[Recorder("a", calls), Recorder("b", calls)])
    assert loop.fit() == "steps"
    assert [c for c in calls if c[0] == "a"] == [
        ("a", "before_run", 0),
        ("a", "after_backward", 0), ("a", "after_step", 1),
        ("a", "after_backward", 1), ("a", "after_step", 2), ("a", "after_log", 2),
        ("a", "after_backward", 2), ("a", "after_step", 3), ("a", "after_validation", 3),
        ("a", "after_backward", 3), ("a", "after_step", 4), ("a", "after_log", 4),
        ("a", "after_backward", 4), ("a", "after_step", 5),
        ("a", "after_backward", 5), ("a", "after_step", 6), ("a", "after_log", 6), ("a", "after_validation", 6),
        ("a", "after_run:steps", 6)]
    # at every point the hooks run in the order they were given
    assert [c[0] for c in calls] == ["a", "b"] * (len(calls) // 2)
    assert [(c[1], c[2]) for c in calls[::2]] == [(c[1], c[2]) for c in calls[1::2]]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 6
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "metrics.csv").is_file()


def test_a_hook_stops_the_run_after_a_validation(tmp_path):
    def observer(step, metrics):
        raise StopTraining(f"enough at {step}")

    loop = TinyLoop(_cfg(tmp_path / "run"), hooks=[ObserveValidation(observer)])
    assert loop.fit() == "stopped after validation: enough at 3"
    assert loop.step == 3
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3  # the state at the stop is kept


def _step_clock(holder: dict, seconds_per_step: float):
    """A clock that advances ``seconds_per_step`` per step of ``holder['loop']``."""
    return lambda: holder["loop"].step * seconds_per_step if "loop" in holder else 0.0


def test_budget_is_summed_over_a_resume(tmp_path):
    out = tmp_path / "run"
    holder: dict = {}
    first = TinyLoop(_cfg(out, "train.steps=4", "train.max_minutes=1"), clock=_step_clock(holder, 10.0))
    holder["loop"] = first
    first.fit()  # 4 steps of 10 s: 40 of the 60 s spent
    assert first.step == 4
    assert load_checkpoint(out / "last.pt")["train_state"]["elapsed_s"] == pytest.approx(40.0)
    holder2: dict = {}
    resumed = TinyLoop(_cfg(out, "train.steps=100", "train.max_minutes=1"), resume=out / "last.pt",
                       clock=_step_clock(holder2, 10.0))
    holder2["loop"] = resumed
    assert resumed.elapsed_before == pytest.approx(40.0)
    assert resumed.fit() == "time"
    assert resumed.step == 6  # 20 s left: two more steps, not six
    assert load_checkpoint(out / "last.pt")["train_state"]["elapsed_s"] == pytest.approx(60.0)


class ThreadRanks:
    """Ranks simulated by threads: broadcast hands rank 0's object to every rank."""

    def __init__(self, rank: int, sync: threading.Barrier, box: list) -> None:
        self.rank, self.sync, self.box = rank, sync, box

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: object) -> object:
        if self.rank == 0:
            self.box[0] = obj
        self.sync.wait()
        out = self.box[0]
        self.sync.wait()
        return out

    def barrier(self) -> None:
        self.sync.wait()


def test_rank_0_decides_the_budget_and_every_rank_stops_at_the_same_step(tmp_path):
    """Rank 0's clock runs 10 s a step, rank 1's 1 s a step: with a 60 s budget rank 1 alone would run 60
    steps; both stop at step 6."""
    world, sync, box = 2, threading.Barrier(2, timeout=60), [None]
    loops: list[TinyLoop] = []
    errors: list[BaseException] = []
    holders = [{}, {}]
    for rank, rate in enumerate((10.0, 1.0)):
        loop = TinyLoop(_cfg(tmp_path / "run", "train.steps=1000", "train.max_minutes=1"),
                        ranks=ThreadRanks(rank, sync, box), clock=_step_clock(holders[rank], rate))
        holders[rank]["loop"] = loop
        loops.append(loop)
    reasons: list[str] = [""] * world

    def run(rank: int) -> None:
        try:
            reasons[rank] = loops[rank].fit()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            sync.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert [loop.step for loop in loops] == [6, 6] and reasons == ["time", "time"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 6  # written by rank 0


def test_time_budget_without_a_limit_never_asks_the_ranks():
    class NoRanks:
        def broadcast(self, obj):
            raise AssertionError("no collective call without a budget")

    budget = TimeBudget(0.0, spent_s=1e9)
    assert not budget.spent(NoRanks()) and budget.remaining_s == float("inf")


def test_resume_refuses_a_mismatched_checkpoint_with_one_clear_error(tmp_path):
    out = tmp_path / "run"
    TinyLoop(_cfg(out, "train.steps=2")).fit()
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ResumeError, match=r"^cannot resume from .*last\.pt: its 'model' config differs from this "
                                          r"run's\. Resume with the saved config"):
        TinyLoop(_cfg(out, "model.max_length=7"), resume=out / "last.pt")
    with pytest.raises(ResumeError, match="'data' config differs"):
        TinyLoop(_cfg(out, "data.img_w=64"), resume=out / "last.pt")

    class SearchLoop(TinyLoop):
        resume_state_key, run_kind = "search_state", "search"

    with pytest.raises(ResumeError, match=r"it is not a search checkpoint \(no search state\); pass the last.pt "
                                          r"of a search run"):
        SearchLoop(_cfg(out), resume=out / "last.pt")
    weights_only = TinyLoop(_cfg(tmp_path / "b"))
    weights_only.save("best.pt", {}, full_state=False)
    with pytest.raises(ResumeError, match="holds no training state"):
        TinyLoop(_cfg(tmp_path / "b"), resume=tmp_path / "b" / "best.pt")
    assert sorted(p.name for p in out.iterdir()) == before  # a refused resume touches nothing
    resumed = TinyLoop(_cfg(out, "train.steps=3"), resume=out / "last.pt")
    assert resumed.step == 2
