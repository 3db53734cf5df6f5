"""``train.compile``: the training forward pass through ``torch.compile``, with a graceful eager fallback.

:class:`CompiledModule` wraps the network a run steps through (the model, or its DDP wrapper). Its first
call compiles the module (TorchDynamo + the chosen backend, inductor by default); when compilation fails
(an operator the backend cannot lower, no C++ compiler, an unsupported Python construct) the run logs one
warning naming the reason and continues in eager mode with the same weights. The wrapper holds no
parameters of its own: the wrapped module's weights are the model's, so checkpoints written by a compiled
run and by an eager run are the same files and resume into either.

Measured on this project's CPU (docs/benchmarks.md, "Faster steps"): the MobileNetV2-family and CRNN
training steps spend their time in oneDNN convolutions and the LSTM, which inductor calls as they are, so
compilation does not pay there; the option is kept for models and machines where it does.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from strkit.config import COMPILE_MODES, ConfigError

log = logging.getLogger(__name__)


def compile_mode(setting: str | bool) -> str:
    """The :data:`COMPILE_MODES` entry a ``train.compile`` setting means (``False`` = ``off``, ``True`` =
    ``default``); :class:`ConfigError` for anything else."""
    mode = ("default" if setting else "off") if isinstance(setting, bool) else setting
    if mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile={setting!r}: use one of {', '.join(COMPILE_MODES)}")
    return mode


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "this module did not compile" (not "this input is wrong")."""
    errors: list[type[BaseException]] = [torch._dynamo.exc.TorchDynamoException]
    inductor_error = getattr(getattr(torch._inductor, "exc", None), "InductorError", None)
    if isinstance(inductor_error, type):
        errors.append(inductor_error)
    return tuple(errors)


def _reason(exc: BaseException) -> str:
    """One line: the compile error and, when it wraps one, the innermost cause (the backend's own error)."""
    inner: BaseException = exc
    while getattr(inner, "inner_exception", None) is not None or inner.__cause__ is not None:
        inner = getattr(inner, "inner_exception", None) or inner.__cause__  # type: ignore[assignment]
    text = next((line.strip() for line in str(inner).splitlines() if line.strip()), "")
    where = type(exc).__name__ if inner is exc else f"{type(exc).__name__} <- {type(inner).__name__}"
    return f"{where}: {text}"[:300]


class CompiledModule(torch.nn.Module):
    """``module`` run through ``torch.compile``; eager after the first compilation failure.

    Args:
        module: the network to run (its ``forward`` signature and outputs are kept).
        mode: a ``torch.compile`` mode from :data:`COMPILE_MODES` other than ``off``.
        backend: the ``torch.compile`` backend (``inductor``; tests use cheaper ones).

    Attributes:
        failure: None while compiled, else the one-line reason compilation was given up.
    """

    def __init__(self, module: torch.nn.Module, mode: str | bool = "default", backend: Any = "inductor") -> None:
        super().__init__()
        mode = compile_mode(mode)
        if mode == "off":
            raise ValueError("CompiledModule needs a compile mode other than 'off'")
        self.module = module
        compiled = torch.compile(module, mode=None if mode == "default" else mode, backend=backend)
        # Not registered as a submodule: it shares `module`'s parameters, which must appear once.
        object.__setattr__(self, "_compiled", compiled)
        self.failure: str | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped module's forward, compiled unless compilation has failed."""
        if self.failure is None:
            try:
                return self._compiled(*args, **kwargs)
            except _compile_errors() as exc:
                self.failure = _reason(exc)
                log.warning("torch.compile failed, continuing in eager mode (%s)", self.failure)
        return self.module(*args, **kwargs)


def maybe_compile(module: torch.nn.Module, setting: str | bool) -> torch.nn.Module:
    """``module`` itself when ``setting`` means ``off`` (see :func:`compile_mode`), else a
    :class:`CompiledModule` around it."""
    mode = compile_mode(setting)
    return module if mode == "off" else CompiledModule(module, mode)
