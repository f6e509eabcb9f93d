"""``fit``: the training loop, from a recipe to checkpoints and COCO metrics.

The loop is deliberately plain: build everything from the recipe, optionally restore it from
``last.pt``, then step. Callbacks observe it (progress, events, checkpoints, early stopping);
their hooks run inside a ``try`` so that ``on_exception`` always hears about a failure.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detector.config import TrainConfig
from detector.data.coco import CocoDetection
from detector.data.sampler import EpochBatchSampler, SeededSamples, train_loader
from detector.data.transforms import build_transforms
from detector.device import autocast_dtype, precision_warning, resolve_device
from detector.engine.callbacks import Callback, EarlyStopping, EpochEvent, StepEvent, TrainState
from detector.engine.checkpoint import (
    Checkpointer,
    last_checkpoint,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from detector.engine.distributed import from_env
from detector.engine.ema import build_ema
from detector.engine.optim import build_optimizer, build_scheduler, total_iterations
from detector.engine.throughput import Throughput
from detector.engine.tracking import tracking_callbacks
from detector.evaluate.coco import CocoMetrics, score_detections
from detector.evaluate.runner import validate
from detector.model.anchor_fit import anchor_fit
from detector.model.build import build_model


class AnchorFitWarning(UserWarning):
    """Some class's boxes are mostly unmatchable by the recipe's anchors."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN/inf; the run stops before the weights are touched."""


@dataclass(frozen=True)
class FitResult:
    workdir: Path
    iterations: int
    epochs: int
    stop_reason: str | None
    metrics: CocoMetrics | None
    """The last validation metrics (None without a validation set)."""
    best_metric: float | None
    rank: int = 0
    """This process's rank in a data-parallel run (only rank 0 reports and writes)."""


def fit(
    cfg: TrainConfig,
    workdir: Path,
    *,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> FitResult:
    """Train ``cfg`` into ``workdir`` (``checkpoints/last.pt``, ``best.pt``, ``recipe.json``).

    With ``resume``, continues exactly from ``checkpoints/last.pt`` when it exists.
    Under ``torchrun`` each process calls this; they train one model together (see
    :mod:`detector.engine.distributed`) and only rank 0 writes.
    """
    loop = Trainer(cfg, workdir, callbacks=callbacks)
    try:
        if resume:
            loop.restore()
        return loop.run()
    finally:
        if loop.dist.enabled:
            torch.distributed.destroy_process_group()


class Trainer:
    """Holds the run's objects; ``run`` is the loop. What callbacks see of it is the
    :class:`detector.engine.callbacks.Trainer` protocol."""

    def __init__(self, cfg: TrainConfig, workdir: Path, *, callbacks: Sequence[Callback]) -> None:
        if cfg.data.train is None:
            raise ValueError("the recipe has no data.train dataset")
        self.cfg = cfg
        self.workdir = workdir
        requested = resolve_device(cfg.device)
        self.dist = from_env(requested)
        self.device = self.dist.device(requested)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.train_set = CocoDetection.from_files(
            cfg.data.train.annotations,
            cfg.data.train.images,
            strict=cfg.data.strict,
            transforms=build_transforms(cfg.data, train=True),
        )
        self.val_set = self._eval_set(cfg)
        # Checked before any step: a class no anchor can match trains poorly however long.
        self.anchor_fit = anchor_fit(self.train_set.coco, cfg.model, cfg.data)
        weak_fit = self.anchor_fit.to_text() if self.anchor_fit.weak() else None
        if weak_fit is not None:
            warnings.warn(weak_fit, AnchorFitWarning, stacklevel=2)
        self.sampler = EpochBatchSampler(
            num_samples=len(self.train_set),
            batch_size=cfg.solver.batch_size,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        # One loader for the run: its workers start with the first epoch and serve them all.
        self.loader = train_loader(
            SeededSamples(self.train_set, seed=cfg.seed),
            self.sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.model = build_model(
            cfg.model,
            cfg.loss,
            num_classes=self.train_set.num_classes,
            class_counts=self.train_set.class_counts(),  # for loss.alpha: auto
        ).to(self.device)
        if cfg.solver.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.dist.wrap(self.model, sync_batchnorm=cfg.solver.sync_batchnorm)
        self.ema = build_ema(self.model, cfg.solver)
        self.optimizer = build_optimizer(self.model, cfg.solver)
        iters_per_epoch = len(self.sampler)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.solver, iters_per_epoch=iters_per_epoch
        )
        self.amp_dtype = autocast_dtype(cfg.solver.amp, self.device)
        # Also in the start event: the service shows them in the job's history.
        slow = precision_warning(cfg.solver.amp, self.device)
        self.warnings = tuple(text for text in (weak_fit, slow) if text is not None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = TrainState(
            max_iters=total_iterations(cfg.solver, iters_per_epoch=iters_per_epoch),
            iters_per_epoch=iters_per_epoch,
        )
        # Only rank 0 writes (checkpoints, the caller's events); every rank stops early alike,
        # since all of them see the same metrics.
        self.callbacks: list[Callback] = []
        if self.dist.is_main:
            self.callbacks.append(
                Checkpointer(
                    workdir=workdir,
                    period_iters=cfg.checkpoint_period_iters,
                    metric=cfg.eval.metric,
                )
            )
            self.callbacks += tracking_callbacks(
                cfg, workdir, model=self.eval_model, val_set=self.val_set, device=self.device
            )
        if cfg.early_stopping is not None:
            es = cfg.early_stopping
            self.callbacks.append(
                EarlyStopping(metric=es.metric, patience=es.patience, min_delta=es.min_delta)
            )
        self.callbacks.extend(cb for cb in callbacks if self.dist.is_main or cb.all_ranks)
        self.last_metrics: CocoMetrics | None = None

    @property
    def eval_model(self) -> nn.Module:
        """What is validated, checkpointed as ``model`` and shipped: the weight average
        with ``solver.ema_decay``, else the trained model itself."""
        return self.model if self.ema is None else self.ema.module

    @property
    def processes(self) -> int:
        return self.dist.world_size

    def _eval_set(self, cfg: TrainConfig) -> CocoDetection | None:
        if cfg.data.val is None:
            return None
        val = CocoDetection.from_files(
            cfg.data.val.annotations,
            cfg.data.val.images,
            strict=cfg.data.strict,
            transforms=build_transforms(cfg.data, train=False),
        )
        if val.category_ids != self.train_set.category_ids:
            raise ValueError(
                f"validation categories {val.category_ids} differ from training categories "
                f"{self.train_set.category_ids}"
            )
        return val

    # -- what callbacks and checkpoints see -------------------------------------------------

    def classes(self) -> list[dict[str, Any]]:
        ids, names = self.train_set.category_ids, self.train_set.class_names
        return [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)]

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue exactly, and to use the model on its own.

        ``model`` is always the weights to use (the average under EMA), so that every reader of
        a checkpoint gets them; the trained weights behind an average travel as ``ema``.
        """
        return {
            "model": self.eval_model.state_dict(),
            **({} if self.ema is None else {"ema": self.ema.checkpoint(trained=self.model)}),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": self.state.checkpoint(),
            "rng": rng_state(),
            "callbacks": {type(cb).__qualname__: cb.state_dict() for cb in self.callbacks},
            "recipe": self.cfg.model_dump(mode="json"),
            "classes": self.classes(),
        }

    def restore(self) -> None:
        path = last_checkpoint(self.workdir)
        if not path.exists():
            return
        ckpt = load_checkpoint(path)
        if ckpt.get("classes") != self.classes():
            raise ValueError(f"{path} was trained on other classes: {ckpt.get('classes')}")
        if self.ema is None:
            self.model.load_state_dict(ckpt["model"])
        else:
            if "ema" not in ckpt:
                raise ValueError(f"{path} was trained without solver.ema_decay")
            self.model.load_state_dict(ckpt["ema"]["trained"])
            self.ema.restore(ckpt["model"], updates=ckpt["ema"]["updates"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        for cb in self.callbacks:
            if type(cb).__qualname__ in ckpt["callbacks"]:
                cb.load_state_dict(ckpt["callbacks"][type(cb).__qualname__])
        self.state.restore(ckpt["state"])
        set_rng_state(ckpt["rng"])

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> FitResult:
        try:
            for cb in self.callbacks:
                cb.on_fit_start(self)
            while not self._done() or self._epoch_end_pending():
                self._run_epoch()
            for cb in self.callbacks:
                cb.on_fit_end(self)
        except BaseException as exc:
            for cb in self.callbacks:
                with contextlib.suppress(Exception):
                    cb.on_exception(self, exc)
            raise
        finally:
            del self.loader  # its workers shut down with it, here rather than at exit
        return FitResult(
            workdir=self.workdir,
            iterations=self.state.iteration,
            epochs=self.state.epoch,
            stop_reason=self.state.stop_reason,
            metrics=self.last_metrics,
            best_metric=self.state.best_metric,
            rank=self.dist.rank,
        )

    def _done(self) -> bool:
        return self.state.should_stop or self.state.iteration >= self.state.max_iters

    def _epoch_complete(self) -> bool:
        state = self.state
        return state.batch_in_epoch >= state.iters_per_epoch or state.iteration >= state.max_iters

    def _epoch_end_pending(self) -> bool:
        """All of an epoch's steps are done but not its end (validation, its event, its save):
        a run resumed from a step's ``last.pt`` saved at the epoch's last iteration."""
        return self.state.batch_in_epoch > 0 and self._epoch_complete()

    def _run_epoch(self) -> None:
        state = self.state
        self.sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
        sums, timer = state.loss_sums, Throughput()
        self.model.train()
        # An epoch resumed at its end has no step left, only its end.
        batches = iter(()) if self._epoch_complete() else self._batches()
        for images, targets in batches:
            losses = self._step(images, targets)
            state.iteration += 1
            state.batch_in_epoch += 1
            state.loss_steps += 1
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value
            ips = timer.tick(len(images) * self.dist.world_size)
            event = StepEvent(
                epoch=state.epoch,
                iteration=state.iteration,
                max_iters=state.max_iters,
                losses=losses,
                lr=self.optimizer.param_groups[0]["lr"],
                images_per_s=ips,
                eta_s=(state.max_iters - state.iteration)
                * self.cfg.solver.batch_size
                / max(ips, 1e-9),
            )
            for cb in self.callbacks:
                cb.on_step_end(self, event)
            # A stop asked on one rank (a signal, say) stops them all at the same step.
            state.should_stop = self.dist.any(state.should_stop, self.device)
            if self._done():
                break
        if self._epoch_complete():
            means = {k: v / max(1, state.loss_steps) for k, v in sums.items()}
            state.epoch += 1
            state.batch_in_epoch, state.loss_sums, state.loss_steps = 0, {}, 0
            self._end_epoch(means)

    def _batches(self) -> Iterator[tuple[list[Tensor], list[dict[str, Tensor]]]]:
        for images, targets in self.loader:
            yield (
                [img.to(self.device, non_blocking=True) for img in images],
                [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets],
            )

    def _step(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, float]:
        """One optimiser step; returns the loss terms as floats."""
        autocast = torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        )
        with autocast:
            loss_dict: dict[str, Tensor] = self.net(images, targets)
        loss = sum(loss_dict.values(), torch.zeros((), device=self.device))
        # Averaged over ranks, so every rank takes the same decision below.
        values = self.dist.mean({k: float(v.detach()) for k, v in loss_dict.items()}, self.device)
        where = f"iteration {self.state.iteration + 1} (epoch {self.state.epoch + 1})"
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLossError(f"non-finite loss at {where}: {values}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.solver.clip_grad_norm or float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # Under fp16 the scaler skips steps with inf gradients by design; elsewhere they are fatal.
        if not self.scaler.is_enabled() and not torch.isfinite(grad_norm):
            raise NonFiniteLossError(f"non-finite gradient norm at {where} (loss {values})")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return values

    def _end_epoch(self, train_losses: dict[str, float]) -> None:
        state = self.state
        val_losses, metrics = None, None
        if self.val_set is not None:
            shard = (self.dist.rank, self.dist.world_size)
            due = state.epoch % self.cfg.eval.period_epochs == 0 or self._done()
            # Each rank validates its share of the images; the means and detections are
            # gathered. A rank may hold no validation image (fewer images than ranks): weight 0.
            found = validate(
                self.eval_model,
                self.val_set,
                device=self.device,
                batch_size=self.cfg.eval.batch_size,
                shard=shard,
                detect=due,
            )
            val_losses = self.dist.weighted_mean(
                found.losses,
                keys=sorted(train_losses),
                weight=len(range(self.dist.rank, len(self.val_set), self.dist.world_size)),
                device=self.device,
            )
            if due:
                detections = self.dist.gather(found.detections)
                metrics = score_detections(
                    self.val_set.coco, detections, backend=self.cfg.eval.backend
                )
                self.last_metrics = metrics
            self.model.train()
        event = EpochEvent(
            epoch=state.epoch,
            iteration=state.iteration,
            train_losses=train_losses,
            val_losses=val_losses,
            metrics=metrics,
        )
        for cb in self.callbacks:
            cb.on_epoch_end(self, event)
