"""train.compile: compiled and eager steps agree, checkpoints are interchangeable, failures fall back."""

from __future__ import annotations

import logging

import pytest
import torch

from strkit.checkpoint import load_checkpoint
from strkit.config import ConfigError, load_config
from strkit.engine.compilation import CompiledModule, maybe_compile
from tests.test_train_e2e import small_model_config, tiny_overrides


def _trainer(word_folder, out, *extra: str, resume=None):
    from strkit.engine.trainer import Trainer

    cfg = load_config(small_model_config(), [*tiny_overrides(word_folder, out, steps=4), *extra])
    return Trainer(cfg, resume=resume, overwrite=resume is None)


def _batch(trainer, n: int = 8):
    torch.manual_seed(0)
    images = torch.rand(n, 1, trainer.cfg.data.img_h, trainer.cfg.data.img_w) * 2 - 1
    return images, ["word", "text", "abc", "strkit", "ocr", "read", "crop", "cpu"][:n]


def test_unknown_compile_mode_is_a_config_error(word_folder, tmp_path):
    with pytest.raises(ConfigError, match="train.compile='fast'"):
        _trainer(word_folder, tmp_path / "run", "train.compile=fast")


def test_off_returns_the_module_itself():
    net = torch.nn.Linear(3, 2)
    assert maybe_compile(net, "off") is net
    assert maybe_compile(net, False) is net  # YAML reads a bare `off` as false
    assert isinstance(maybe_compile(net, "default"), CompiledModule)
    assert isinstance(maybe_compile(net, True), CompiledModule)


def test_wrapper_adds_no_parameters():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    wrapped = CompiledModule(net, "default", backend="eager")
    assert sum(p.numel() for p in wrapped.parameters()) == sum(p.numel() for p in net.parameters())


def test_compiled_steps_match_eager_steps(word_folder, tmp_path):
    eager = _trainer(word_folder, tmp_path / "eager")
    compiled = _trainer(word_folder, tmp_path / "compiled")
    compiled.model.load_state_dict(eager.model.state_dict())
    # aot_eager traces forward and backward like inductor does, without generating C++ (fast in tests)
    compiled.net = CompiledModule(compiled.net, "default", backend="aot_eager")
    images, labels = _batch(eager)
    first = (eager.train_step(images, labels), compiled.train_step(images, labels))
    assert first[1] == pytest.approx(first[0], rel=1e-5)
    for (name, pa), pb in zip(eager.model.named_parameters(), compiled.model.parameters(), strict=True):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is not None:  # the first step's gradients (Adam's updates would amplify rounding)
            assert torch.allclose(pa.grad, pb.grad, rtol=1e-3, atol=1e-5), name
    for _ in range(2):
        a = eager.train_step(images, labels)
        b = compiled.train_step(images, labels)
        assert a is not None and b is not None
        assert b == pytest.approx(a, rel=2e-3)
    assert compiled.net.failure is None


def test_failed_compilation_falls_back_to_eager_with_one_warning(caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
    wrapped = CompiledModule(net, "default", backend=broken_backend)
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING, logger="strkit.engine.compilation"):
        out1 = wrapped(x)
        out2 = wrapped(x)
    assert torch.equal(out1, net(x)) and torch.equal(out2, net(x))
    assert wrapped.failure is not None and "no C++ compiler here" in wrapped.failure
    warnings = [r for r in caplog.records if "eager mode" in r.getMessage()]
    assert len(warnings) == 1


def test_compiled_run_through_config_and_resume_across_modes(word_folder, tmp_path, monkeypatch):
    """A short run with train.compile=default writes the same checkpoint layout as an eager one; an eager
    run resumes from it and a compiled run resumes from the eager continuation. (The backend is swapped
    for aot_eager, which traces like inductor but generates no C++: inductor takes minutes on one core;
    tools/bench.py train --compile runs the real one.)"""
    import strkit.engine.compilation as compilation

    real_compile = torch.compile
    monkeypatch.setattr(compilation.torch, "compile",
                        lambda module, **kw: real_compile(module, **{**kw, "backend": "aot_eager"}))
    out = tmp_path / "run"
    steps = ("train.steps=6", "train.save_every=2", "train.val_every=2")

    def run_until(trainer, stop_at: int | None) -> None:
        """fit(), cut like a killed run just before step stop_at + 1 (after the checkpoint of stop_at)."""
        if stop_at is not None:
            step = trainer.train_step

            def cut(*args, **kwargs):
                if trainer.step >= stop_at:
                    raise _Cut
                return step(*args, **kwargs)

            trainer.train_step = cut
        try:
            trainer.fit()
        except _Cut:
            pass

    first = _trainer(word_folder, out, *steps, "train.compile=default")
    assert isinstance(first.net, CompiledModule)
    run_until(first, 2)
    assert first.net.failure is None, first.net.failure
    saved = load_checkpoint(out / "last.pt")
    assert saved["step"] == 2
    eager_keys = set(_trainer(word_folder, tmp_path / "eager").model.state_dict())
    assert set(saved["state_dict"]) == eager_keys  # no wrapper prefixes in the weights

    second = _trainer(word_folder, out, *steps, resume=out / "last.pt")
    assert not isinstance(second.net, CompiledModule)
    run_until(second, 4)
    assert load_checkpoint(out / "last.pt")["step"] == 4

    third = _trainer(word_folder, out, *steps, "train.compile=default", resume=out / "last.pt")
    run_until(third, None)
    assert third.net.failure is None
    assert load_checkpoint(out / "last.pt")["step"] == 6


class _Cut(Exception):
    """Raised to cut a run between two steps."""
