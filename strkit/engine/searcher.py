"""Architecture search: ProxylessNAS over a recogniser whose backbone is a search space (e.g. ``supernet``),
as steps and hooks on the run loop (:mod:`strkit.engine.loop`).

One :class:`Searcher` runs one config (``model.backbone.name: supernet`` plus a ``search`` section,
see :mod:`strkit.nas.config`). ``fit()``:

1. gets the latency table (``search.lut``, or measures one on ``search.lut_device`` and writes
   ``lut.json``) when the constraint is ``latency``;
2. trains the supernet's weights on the mixed training loader, one sampled path per cell per step
   (uniformly for the first ``search.warmup_steps`` steps, then from p = softmax(α));
3. after the warm-up, after every ``search.arch_every`` weight steps, updates α with Adam on a batch
   of the *held-out split of the training data* (``data.val_fraction`` / ``data.val``; benchmark
   sets are refused by the data layer) with binary gates and the cost loss;
4. validates the current argmax architecture every ``train.val_every`` steps, checkpoints
   (``last.pt``: weights, α, both optimisers, scheduler, sampler, gate RNG, probability history, the
   latency table) every ``train.save_every`` steps, and resumes from it;
5. at the end derives ``arch.json`` (argmax per cell), writes the search report
   (:func:`strkit.nas.report.write_report`) with predicted vs measured latency, and ``retrain.yaml``
   (the same run with ``model.backbone: {name: searched, arch: arch.json}``) for ``tools/train.py``.

With ``model.rectifier: {name: tps, loc: {name: supernet, ...}}`` the rectifier's localisation body is
searched jointly: its cells get α and gates like the backbone's, the cost covers both parts, the
architecture gets a ``rectifier`` section and ``retrain.yaml`` sets ``model.rectifier.loc: {name:
searched, arch: arch.json}``.

Under ``torchrun`` every rank samples the same paths (the gate generator is seeded identically),
gradients of the weights and of α are averaged across ranks, and α is broadcast from rank 0 after
every architecture step, so α stays identical on all ranks; rank 0 logs, saves and reports. The time
budget (``train.max_minutes``) is the run loop's: summed over resumes, rank 0's clock decides, and every
rank stops at the same step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import yaml
from torch.utils.data import DataLoader

from strkit.charset import Charset
from strkit.config import Config
from strkit.models.recognizer import RecognitionModel, build_model
from strkit.models.rectifiers.tps import LOC_BODIES
from strkit.models.registry import BACKBONES
from strkit.nas import search_space  # noqa: F401  (registers the 'supernet' search space)
from strkit.nas.arch import build_searched, derive_arch, find_supernet, save_arch, searched_edges, section_arch
from strkit.nas.config import SearchConfig, search_config
from strkit.nas.latency.cost import CostModel, cost_loss
from strkit.nas.latency.table import LatencyTable, measure_lut, predict_arch_latency
from strkit.nas.latency.validation import calibrate_lut, measure_arch_latency, validate_lut
from strkit.nas.proxyless import (
    GateController,
    arch_parameters,
    build_alpha_optimizer,
    named_weight_parameters,
    weight_parameters,
)
from strkit.nas.report import ProbabilityHistory, cell_descriptions, write_report
from strkit.nas.space import SearchSpace, is_search_space, search_space_names, space_class

from .distributed import DistInfo, broadcast_object
from .evaluator import evaluate_loader
from .loop import Hook, MeanWindow, RunLoop
from .optim import build_scheduler, optimizer_for
from .run_data import RunData, build_run_data
from .runtime import TimeBudget, autocast_context

log = logging.getLogger("strkit")


@contextlib.contextmanager
def _frozen(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Turn off ``requires_grad`` of ``params`` for the block (α steps need no weight gradients)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def _average_grads(params: list[torch.nn.Parameter], dist: DistInfo) -> None:
    """All-reduce (mean) the gradients of ``params`` that have one (the same set on every rank, since
    every rank samples the same paths)."""
    if not dist.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= dist.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_params(params: list[torch.nn.Parameter], dist: DistInfo) -> None:
    """Copy rank 0's values of ``params`` to every rank (keeps α bit-identical)."""
    if not dist.enabled:
        return
    with torch.no_grad():
        for p in params:
            tdist.broadcast(p.data, src=0)


def _broadcast_model(model: torch.nn.Module, dist: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (each rank initialised with its own seed)."""
    if not dist.enabled:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            tdist.broadcast(t.data, src=0)


def _mean_entropy(model: torch.nn.Module) -> float:
    """Mean over cells of the entropy of p (nats): log(N) at the start, 0 once every cell has decided."""
    ents = []
    for a in arch_parameters(model):
        p = torch.softmax(a.detach().float(), 0)
        ents.append(float(-(p * torch.log(p.clamp_min(1e-12))).sum()))
    return float(np.mean(ents)) if ents else 0.0


def _searched_rectifier(rectifier: Any, arch_path: str) -> Any:
    """The rectifier spec of a retrain config: a searched localisation body (a search space of
    ``LOC_BODIES``) becomes what its space retrains as, from ``arch_path`` (its ``rectifier`` section); any
    other rectifier is kept as it is."""
    if not isinstance(rectifier, dict):
        return rectifier
    space = space_class(LOC_BODIES, rectifier.get("loc"))
    if space is None:
        return rectifier
    return {**rectifier, "loc": space.retrain_spec(arch_path)}


def write_retrain_config(cfg: Config, arch_path: Path, path: Path, out_dir: Path) -> Path:
    """Write ``path``: the search config ``cfg`` with ``model.backbone`` replaced by the spec its search space
    retrains as (``{name: searched, arch: arch_path}``), a searched rectifier's ``model.rectifier.loc``
    likewise, no ``search`` section and ``train.out_dir = out_dir``, ready for ``tools/train.py``."""
    retrain = cfg.to_dict()
    arch_file = str(Path(arch_path).resolve())
    space = space_class(BACKBONES, retrain["model"]["backbone"]) or SearchSpace
    retrain["model"]["backbone"] = space.retrain_spec(arch_file)
    retrain["model"]["rectifier"] = _searched_rectifier(retrain["model"]["rectifier"], arch_file)
    retrain["search"] = {}
    retrain["train"]["out_dir"] = str(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Train this architecture from scratch: tools/train.py " + str(path) + "\n"
                    + yaml.safe_dump(retrain, sort_keys=False, default_flow_style=None))
    return path


class _SearchGradients(Hook):
    """After backward of a weight step: drop α's gradients (the full (DARTS) mode also reaches α there: α
    moves only in α steps) and average the weights' gradients across ranks."""

    def after_backward(self, loop: RunLoop) -> None:
        assert isinstance(loop, Searcher)
        for a in loop.alphas:
            a.grad = None
        _average_grads(loop.weights, loop.dist)


class _ArchitectureSteps(Hook):
    """After each weight step: an α step every ``search.arch_every`` steps after the warm-up, the probability
    history every ``search.history_every`` steps, and the wall time for the report."""

    def after_step(self, loop: RunLoop) -> None:
        assert isinstance(loop, Searcher)
        s, step = loop.scfg, loop.step
        if step > s.warmup_steps and (step - s.warmup_steps) % s.arch_every == 0:
            images, labels = next(loop.arch_iter)
            t_step = time.perf_counter()
            loop.arch_row = loop.arch_step(images, labels)
            loop._count("arch", t_step)
        if step % s.history_every == 0 or step == loop.cfg.train.steps:
            loop.history.record(step, loop.model)
        loop.timing["elapsed_s"] = loop.elapsed_s


class Searcher(RunLoop):
    """Runs one architecture search from a resolved :class:`Config` (a :class:`~strkit.engine.loop.RunLoop`).

    Args:
        cfg: the run's config (``model.backbone`` must name a search space, e.g. ``supernet``).
        resume: a ``last.pt`` written by a search to continue from (same model/data/search config).
        overwrite: replace the outputs of an earlier run in ``train.out_dir`` (see
            :mod:`strkit.engine.run_dir`); without it (or ``resume``) :meth:`fit` refuses such a folder.
    """

    progress_desc = "search"
    resume_sections = ("model", "data", "search")
    resume_state_key = "search_state"
    run_kind = "search"

    def __init__(self, cfg: Config, resume: str | Path | None = None, overwrite: bool = False) -> None:
        self.scfg: SearchConfig = search_config(cfg.search)
        super().__init__(cfg, resume, overwrite, hooks=[_SearchGradients(), _ArchitectureSteps()])
        if not is_search_space(BACKBONES, cfg.model.backbone):
            raise ValueError(f"model.backbone.name is {dict(cfg.model.backbone).get('name')!r}: a search needs a "
                             f"search-space backbone ({', '.join(search_space_names(BACKBONES))}; see "
                             "configs/search/)")
        if cfg.model.geometry_loss > 0:
            raise ValueError("model.geometry_loss: the search does not feed word geometry to the rectifier; "
                             "search with model.geometry_loss=0 and use it when retraining (tools/train.py)")
        payload = self.resume_payload
        charset = Charset.from_dict(payload["charset"]) if payload else None
        self.model: RecognitionModel = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w,
                                                   cfg.data.channels, charset=charset).to(self.device)
        self.net = self.model
        self.space = find_supernet(self.model)
        s = self.scfg
        # the same seed on every rank: every rank trains the same sampled sub-network
        self.gates = GateController(self.model, method=s.method, paths=s.paths, seed=cfg.train.seed)
        self.weights = weight_parameters(self.model)
        self.alphas = arch_parameters(self.model)
        self.optimizer = optimizer_for(named_weight_parameters(self.model), cfg.train.optimizer, cfg.train.lr_scale)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.scheduler, cfg.train.steps)
        self.arch_optimizer = build_alpha_optimizer(self.model, s.arch_lr, s.arch_betas, s.arch_eps,
                                                    s.arch_weight_decay)
        self.scaler = torch.amp.GradScaler(enabled=cfg.train.precision == "fp16")
        self.arch_steps = 0
        self.arch_batches = 0
        self.history = ProbabilityHistory()
        self.lut: LatencyTable | None = None
        # wall time of the search loop and compute time of its steps (excluding data loading), kept
        # across resumes: the search-cost figures of the report
        self.timing = {"elapsed_s": 0.0, "weight_s": 0.0, "weight_n": 0, "arch_s": 0.0, "arch_n": 0}
        self.resume_state()
        _broadcast_model(self.model, self.dist)  # every rank starts from rank 0's weights and α
        self.cost: CostModel | None = None
        self.data: RunData | None = None
        self.window = MeanWindow()
        self.arch_row: dict[str, float] = {}  # the last α step's figures (logged until the next one)
        self.arch_iter: Iterator[Sequence[Any]] = iter(())

    # -- configuration and state ---------------------------------------------------------------
    @property
    def lut_threads(self) -> int:
        return self.scfg.lut_threads or self.cfg.train.threads or torch.get_num_threads()

    def load_extras(self, payload: dict[str, Any]) -> None:
        ss = payload["extra"]["search_state"]
        self.arch_optimizer.load_state_dict(ss["arch_optimizer"])
        self.gates.load_state_dict(ss["gates"])
        self.history = ProbabilityHistory.from_dict(ss["history"])
        self.arch_steps = int(ss["arch_steps"])
        self.arch_batches = int(ss["arch_batches"])
        self.timing.update(ss.get("timing") or {})
        if "elapsed_s" not in payload["train_state"]:  # a search checkpoint with its wall time in the timing only
            self.budget = TimeBudget(self.cfg.train.max_minutes, float(self.timing["elapsed_s"]), self.clock)
        if ss.get("lut"):
            self.lut = LatencyTable.from_dict(ss["lut"], "checkpoint latency table")

    def checkpoint_extra(self) -> dict[str, Any]:
        search_state = {
            "arch_optimizer": self.arch_optimizer.state_dict(), "gates": self.gates.state_dict(),
            "history": self.history.to_dict(), "arch_steps": self.arch_steps,
            "arch_batches": self.arch_batches, "lut": self.lut.to_dict() if self.lut else None,
            "timing": dict(self.timing),
            "probabilities": self.history.probs[-1] if self.history.probs else None,
            "arch": derive_arch(self.model),  # the current argmax architecture
        }
        return {"search_state": search_state}

    # -- latency table ------------------------------------------------------------------------
    def _prepare_cost(self) -> None:
        s = self.scfg
        if s.constraint == "latency" and self.lut is None:
            if s.lut:
                self.lut = LatencyTable.load(s.lut)
            else:
                table = None
                if self.dist.is_main:
                    log.info("measuring the latency table on %s with %d thread(s), %d repeats ...",
                             s.lut_device, self.lut_threads, s.lut_repeats)
                    t0 = time.perf_counter()
                    lut = measure_lut(self.model, s.lut_device, self.lut_threads, s.lut_repeats,
                                      s.lut_warmup, s.lut_batch, include_rest=s.lut_rest)
                    table = calibrate_lut(self.model, lut, s.lut_calibrate, s.lut_device, self.lut_threads,
                                          s.lut_repeats, s.lut_warmup, seed=self.cfg.train.seed).to_dict()
                    log.info("latency table: %d entries in %.1f s, calibration scale %.3f", len(table["entries"]),
                             time.perf_counter() - t0, table["scale"])
                table = broadcast_object(table, self.dist)
                self.lut = LatencyTable.from_dict(table)
        if self.lut is not None:
            for note in self.lut.compatibility(s.lut_device, self.lut_threads):
                log.warning("latency table: %s", note)
            if self.dist.is_main:
                self.lut.save(self.out_dir / "lut.json")
        if s.constraint != "none":
            self.cost = CostModel(self.model, s.constraint, self.lut)
            lo, hi = self.cost.bounds()
            if self.dist.is_main:
                log.info("%s of the sub-networks: %.4g .. %.4g %s; target %.4g", s.constraint, lo, hi,
                         self.cost.unit, s.target)
                if not lo <= s.target <= hi:
                    log.warning("the %s target %.4g %s is outside the reachable range %.4g .. %.4g",
                                s.constraint, s.target, self.cost.unit, lo, hi)

    # -- steps ----------------------------------------------------------------------------------
    def _targets(self, labels: list[str]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in self.model.encode(labels).items()}

    def run_step(self, batch: Sequence[Any]) -> None:
        t_step = time.perf_counter()
        loss = self.weight_step(batch[0], batch[1])
        self._count("weight", t_step)
        self.window.add("loss", loss)

    def weight_step(self, images: torch.Tensor, labels: list[str]) -> float | None:
        """One weight step on a sampled sub-network. Returns the loss (None when not finite)."""
        self.gates.weight_step(uniform=self.step < self.scfg.warmup_steps)
        self.model.train()
        with autocast_context(self.device, self.cfg.train.precision):
            loss = self.forward_loss(self.images_to_device(images), self._targets(labels)).loss
        if not self.optimise(loss, clip=self.weights, what="weight step"):
            return None
        return float(loss.detach())

    def arch_step(self, images: torch.Tensor, labels: list[str]) -> dict[str, float]:
        """One α step (binary gates, or the full weighted sum) on a held-out batch."""
        s = self.scfg
        self.gates.alpha_step()
        self.model.train()
        self.arch_optimizer.zero_grad(set_to_none=True)
        with _frozen(self.weights), autocast_context(self.device, self.cfg.train.precision):
            task = self.forward_loss(self.images_to_device(images), self._targets(labels)).loss
        row: dict[str, float] = {"arch_task_loss": float(task.detach())}
        loss = task.float()
        if self.cost is not None:
            expected = self.cost.expected()
            loss = cost_loss(loss, expected, s.target, s.loss, s.reg_lambda, s.reg_beta)
            row["expected_cost"] = float(expected.detach())
        if not torch.isfinite(loss.detach()):
            log.warning("non-finite architecture loss at step %d: α step skipped", self.step)
            return row
        loss.backward()
        _average_grads(self.alphas, self.dist)
        before = self.gates.alpha_snapshot()
        self.arch_optimizer.step()
        self.gates.rescale_two_path(before)
        _broadcast_params(self.alphas, self.dist)
        self.arch_steps += 1
        row["arch_loss"] = float(loss.detach())
        return row

    def _count(self, kind: str, t0: float) -> None:
        """Add the time since ``t0`` to the ``kind`` (``weight`` or ``arch``) step timing."""
        self.timing[f"{kind}_s"] += time.perf_counter() - t0
        self.timing[f"{kind}_n"] += 1

    def cost_figures(self, retrain_config: Path) -> dict[str, Any]:
        """Search cost: wall time, peak memory, mean step times, and (``search.cost_train_steps`` > 0) the
        ratio of one search step (weight + α) to one training step of the derived network, timed in a fresh
        process with the same batch, input, precision and threads on synthetic batches."""
        from strkit.engine import train_timing as speed

        t = self.timing
        weight_s = t["weight_s"] / max(t["weight_n"], 1)
        arch_s = t["arch_s"] / max(t["arch_n"], 1)
        rss = speed.peak_rss_mib() / 1024
        figures: dict[str, Any] = {
            "search wall time (min)": t["elapsed_s"] / 60,
            "peak RSS of the search process (GiB)": rss,
            "weight step, mean (s)": weight_s,
            "α step, mean (s)": arch_s,
        }
        steps = self.scfg.cost_train_steps
        if steps <= 0:
            return figures
        train, data = self.cfg.train, self.cfg.data
        case = speed.TrainCase(
            model=str(retrain_config), precision=train.precision, channels_last=bool(train.channels_last),
            batch_size=train.batch_size, img_h=data.img_h, img_w=data.img_w, channels=data.channels,
            threads=train.threads or torch.get_num_threads(), steps=steps, warmup=2, windows=1,
            overrides=(f"train.out_dir={self.out_dir / 'cost_probe'}", "train.max_minutes=0"))
        try:
            single = speed.run_case(speed.measure_train, case)
        except Exception as exc:  # noqa: BLE001 - the search's results must not be lost to a timing probe
            log.warning("search cost: timing the derived network's training step failed (%s: %s); the report "
                        "leaves the step and memory ratios out", type(exc).__name__, exc)
            return figures
        single_s = single.step_ms / 1000
        search_s = weight_s + (arch_s / self.scfg.arch_every if t["arch_n"] else 0.0)
        figures.update({
            "training step of the derived network (s)": single_s,
            "peak RSS of that training (GiB)": single.peak_rss_mib / 1024,
            "search step / training step (time)": search_s / single_s if single_s > 0 else math.nan,
            "search / training peak RSS (memory)": rss / (single.peak_rss_mib / 1024)
            if single.peak_rss_mib > 0 else math.nan,
        })
        return figures

    def _arch_batches(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """Endless batches of the held-out split, resuming where the saved run stopped."""
        assert self.data is not None and self.data.val is not None
        loader: DataLoader = self.data.val
        n = len(loader)
        skip = self.arch_batches % n if n else 0
        while True:
            for i, batch in enumerate(loader):
                if skip:
                    if i < skip:
                        continue
                    skip = 0
                self.arch_batches += 1
                yield batch

    def validate(self) -> dict[str, float]:
        """Accuracy of the current argmax architecture on the held-out split."""
        if self.data is None or self.data.val is None:
            return {}
        self.gates.argmax()
        max_batches = self.cfg.train.val_batches
        loader: Any = self.data.val
        if max_batches:
            loader = (b for i, b in zip(range(max_batches), self.data.val, strict=False))
        m = evaluate_loader(self.model, loader, self.cfg.eval.protocol, "val", self.device,
                            self.cfg.train.precision)
        return {"val_accuracy": m.accuracy, "val_ned": m.ned, "val_confidence": m.mean_confidence}

    # -- the run ------------------------------------------------------------------------------
    def setup(self) -> None:
        self._prepare_cost()
        self.data = build_run_data(self.cfg, self.model.charset, self.dist, start_step=self.step)
        if self.data.val is None:
            raise ValueError("the search updates α on a held-out split of the training data, and there is "
                             "none: set data.val_fraction (e.g. 0.1) or list data.val sources (synthetic "
                             "sources are not split)")
        if self.ranks.is_main:
            log.info("search: %d cells, %s; weights on %s, α on %d held-out samples",
                     len(self.alphas), self.scfg.method, ", ".join(self.data.train_names), self.data.val_size)
        if not self.history.steps:
            self.history.record(self.step, self.model)
        self.arch_iter = self._arch_batches()
        self.window.clear()

    def log_row(self) -> dict[str, float]:
        row = {"loss": self.window.mean("loss"), "lr": self.scheduler.get_last_lr()[0],
               "entropy": _mean_entropy(self.model), **self.arch_row}
        self.window.clear()
        return row

    def progress_postfix(self, row: dict[str, float], last_val: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{row['loss']:.3f}", "cost": f"{self.arch_row.get('expected_cost', 0):.3g}",
                "H": f"{row['entropy']:.2f}"}

    def finish(self, reason: str) -> dict[str, Any]:
        """Rank 0 writes the outputs (:meth:`write_outputs`); returns their figures (empty on other ranks)."""
        if reason == "time" and self.ranks.is_main:
            log.info("search stopped at step %d (train.max_minutes)", self.step)
        result: dict[str, Any] = {}
        if self.ranks.is_main:
            assert self.data is not None
            log.info("search data: %s; %s", self.data.label_filter.report(), self.data.corrupt_report())
            result = self.write_outputs(self.last_val)
        return result

    # -- outputs --------------------------------------------------------------------------------
    def write_outputs(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """Derive ``arch.json``, write the report and ``retrain.yaml``; returns the report figures."""
        s = self.scfg
        if not self.history.steps or self.history.steps[-1] != self.step:
            self.history.record(self.step, self.model)
        arch = derive_arch(self.model, metadata={
            "steps": self.step, "method": s.method, "constraint": s.constraint, "target": s.target,
            "probabilities": self.history.probs[-1]})
        arch_path = save_arch(arch, self.out_dir / "arch.json")
        backbone = build_searched(arch)
        figures: dict[str, Any] = {"search steps": self.step, "architecture steps": self.arch_steps,
                                   "backbone parameters (M)": sum(p.numel() for p in backbone.parameters()) / 1e6}
        if "rectifier" in arch:
            loc = build_searched(section_arch(arch, "rectifier"))
            figures["rectifier localisation parameters (M)"] = sum(p.numel() for p in loc.parameters()) / 1e6
        figures.update({k: float(v) for k, v in (metrics or {}).items()})
        validation = None
        if self.cost is not None:
            unit = self.cost.unit
            chosen = [e.chosen() for e in searched_edges(self.model)]
            figures[f"{s.constraint} target ({unit})"] = s.target
            figures[f"expected {s.constraint} under p ({unit})"] = float(self.cost.expected().detach())
            figures[f"{s.constraint} of the chosen network ({unit})"] = self.cost.of_choices(chosen)
        if self.lut is not None:
            threads = self.lut_threads
            figures["predicted backbone latency (ms)"] = predict_arch_latency(arch, self.lut, parts=("backbone",))
            figures["measured backbone latency (ms)"] = measure_arch_latency(
                arch, s.lut_device, threads, s.measure_repeats, s.lut_warmup, s.lut_batch)
            if "rectifier" in arch:
                figures["predicted rectifier localisation latency (ms)"] = predict_arch_latency(
                    arch, self.lut, parts=("rectifier",))
                figures["fixed parts: rectifier remainder + sequence + decoder (ms)"] = self.lut.fixed_ms
            else:
                figures["fixed parts: rectifier + sequence + decoder (ms)"] = self.lut.fixed_ms
            figures["predicted recogniser latency (ms)"] = predict_arch_latency(arch, self.lut, include_fixed=True)
            figures["latency table device"] = (f"{self.lut.meta.get('device')} ({self.lut.meta.get('device_name')}), "
                                               f"{self.lut.meta.get('threads')} thread(s), batch "
                                               f"{self.lut.meta.get('batch')}")
            if s.validate_samples > 0:
                validation = validate_lut(self.model, self.lut, s.validate_samples, s.lut_device, threads,
                                          s.lut_repeats, s.lut_warmup, seed=self.cfg.train.seed).to_dict()
                figures["latency table MAE on random sub-networks (%)"] = validation["mae_pct"]
        retrain_path = write_retrain_config(self.cfg, arch_path, self.out_dir / "retrain.yaml",
                                            self.out_dir / "retrain")
        figures.update(self.cost_figures(retrain_path))
        paths = write_report(self.out_dir, cells=cell_descriptions(self.model), history=self.history, arch=arch,
                             figures=figures, lut_validation=validation)
        ops = " ".join(c["op"] for c in arch["cells"])
        if "rectifier" in arch:
            ops += " | rectifier: " + " ".join(c["op"] for c in arch["rectifier"]["cells"])
        log.info("architecture: %s -> %s; report: %s", ops, arch_path, paths["markdown"])
        return {"arch": str(arch_path), "report": str(paths["markdown"]), "figures": figures}
