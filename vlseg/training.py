"""The parts of a training loop, each testable on its own.

``vlseg.engine.fit`` (``vlseg train`` and ``vlseg tune``) composes all of them; ``vlseg.align``
reuses the schedule, the optimizer step, the metrics log and the checkpointer around its own
loop over cached features.

- :func:`make_loader`: the shuffled, seeded (or distributed) data loader of a training set;
- :func:`warmup_cosine` and :func:`optimizer_step`: the learning-rate schedule and one update;
- :class:`StepTimer`: wall and compute time per optimizer step;
- :class:`MetricsLog`: ``metrics.jsonl`` rows and the ``curves.png`` drawn from them;
- :class:`Checkpointer`: ``out/last`` (weights, optimizer and trainer state), ``out/best``, and
  resuming from ``out/last``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from .atomic import atomic_write, write_json
from .config import LoopConfig
from .data.manifest import collate

OPTIMIZER_STATE = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"


# ---------------------------------------------------------------------------- data
def make_loader(ds: Dataset, cfg: LoopConfig, world: int = 1) -> tuple[DataLoader, Sampler]:
    """The training loader of ``ds`` and its sampler.

    One process shuffles with a generator seeded by ``cfg.seed`` (the global RNG is not used);
    under ``torchrun`` (``world > 1``) a ``DistributedSampler`` splits the data between ranks
    (call its ``set_epoch`` every epoch). Incomplete last batches are dropped.

    Raises:
        ValueError: ``ds`` does not fill one batch of ``cfg.batch_size``.
    """
    sampler = (
        DistributedSampler(ds, seed=cfg.seed)
        if world > 1
        else RandomSampler(ds, generator=torch.Generator().manual_seed(cfg.seed))
    )
    loader = DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        drop_last=True,
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(ds)} training items do not fill one batch of batch_size={cfg.batch_size}; "
            "lower batch_size or use more data"
        )
    return loader, sampler


# ---------------------------------------------------------------------------- optimisation
def total_steps(cfg: LoopConfig, batches_per_epoch: int) -> int:
    """Optimizer steps of a run: ``cfg.max_steps``, or every epoch's worth."""
    return cfg.max_steps or cfg.epochs * max(1, batches_per_epoch // cfg.grad_accum)


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """Learning-rate factor of optimizer step ``step`` (0-based): linear warm-up over
    ``warmup`` steps to 1, then cosine decay to 0 at ``total`` (and 0 after it)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def trainable_group(model: torch.nn.Module, lr: float) -> list[dict]:
    """One optimizer group of every parameter that requires grad, at ``lr``."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": params, "lr": lr, "base_lr": lr}]


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    factor: float,
    *,
    clip: Iterable[torch.Tensor] | None = None,
    max_norm: float = 1.0,
) -> None:
    """Set every group's lr to ``base_lr * factor``, clip the gradient norm of ``clip`` (if
    given) to ``max_norm``, step, and clear the gradients."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def freeze_frozen_batchnorm(model: torch.nn.Module) -> None:
    """Put BatchNorm layers without trainable parameters in eval mode, so their running
    statistics stay as loaded (call after ``model.train()``)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in m.parameters(recurse=False)
        ):
            m.eval()


# ---------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Seconds per optimizer step, with and without the time spent waiting for data.

    Per epoch: ``start_epoch()``; per micro-batch: ``start()`` before the forward pass and
    ``stop(stepped=...)`` after the backward pass (and the optimizer step, when there is one).
    The first step of an epoch also pays for starting the loader and is not counted. CUDA work
    is synchronised before reading the clock, so the GPU's time is measured, not its launch.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.step_times: list[float] = []  # between optimizer steps
        self.compute_times: list[float] = []  # the same without waiting for the loader
        self._compute = 0.0
        self._t_in = self._t_prev = self._t_log = time.time()
        self._first = True

    def start_epoch(self) -> None:
        self._t_log = self._t_prev = time.time()
        self._first = True

    def start(self) -> None:
        self._t_in = time.time()

    def stop(self, *, stepped: bool) -> None:
        _sync(self.device)
        now = time.time()
        self._compute += now - self._t_in
        if not stepped:  # a micro-batch of an accumulated step: its compute adds up
            return
        if not self._first:
            self.step_times.append(now - self._t_prev)
            self.compute_times.append(self._compute)
        self._compute = 0.0
        self._t_prev, self._first = now, False

    def rates(self, n: int) -> dict[str, float | None]:
        """``sec_per_step`` (wall time since the last call or the epoch start, over ``n``
        steps) and ``compute_sec_per_step`` (median of the last ``n`` timed steps; None
        before the first)."""
        now = time.time()
        sec = (now - self._t_log) / n
        self._t_log = now
        recent = self.compute_times[-n:]
        return {
            "sec_per_step": sec,
            "compute_sec_per_step": float(np.median(recent)) if recent else None,
        }

    def summary(self) -> dict[str, float]:
        """Median ``sec_per_step`` and ``compute_sec_per_step`` (NaN without timed steps)."""
        return {
            "sec_per_step": float(np.median(self.step_times)) if self.step_times else math.nan,
            "compute_sec_per_step": (
                float(np.median(self.compute_times)) if self.compute_times else math.nan
            ),
        }


# ---------------------------------------------------------------------------- metrics
class MetricsLog:
    """A run's ``metrics.jsonl`` (one JSON object a line) and the curves drawn from it.

    Rows of ``fit`` carry ``kind`` ("train" or "val"), ``step`` and ``epoch``; ``plot`` draws
    the train loss and the validation Dice, mIoU and presence AUROC against the step.
    """

    def __init__(self, path: str | Path, *, fresh: bool = False) -> None:
        """``fresh``: delete rows of an earlier run first (else new rows are appended)."""
        self.path = Path(path)
        if fresh:
            self.path.unlink(missing_ok=True)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self, out_png: str | Path) -> None:
        """Redraw ``out_png`` (written atomically) from every row so far."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        train = [r for r in rows if r.get("kind") == "train"]
        val = [r for r in rows if r.get("kind") == "val"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        if train:
            axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
            axes[0].set_xlabel("step")
            axes[0].legend()
        if val:
            for key in ("dice", "mIoU", "presence_auroc"):
                axes[1].plot(
                    [r["step"] for r in val],
                    [r.get(key, np.nan) for r in val],
                    "o-",
                    label=f"val {key}",
                )
            axes[1].set_xlabel("step")
            axes[1].set_ylim(0, 1)
            axes[1].legend()
        fig.tight_layout()
        with atomic_write(out_png) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)


# ---------------------------------------------------------------------------- checkpoints
def save_trainer_state(path: str | Path, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write the optimizer state (``optimizer.safetensors``: tensors under "<param>.<name>")
    and ``trainer_state.json`` (``state`` plus the param groups) into directory ``path``,
    each atomically; ``trainer_state.json`` goes last, so its presence marks a complete save."""
    path = Path(path)
    sd = optimizer.state_dict()
    tensors = {
        f"{idx}.{k}": v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        for idx, st in sd["state"].items()
        for k, v in st.items()
    }
    with atomic_write(path / OPTIMIZER_STATE) as tmp:
        save_file(tensors, str(tmp))
    write_json(path / TRAINER_STATE, {"param_groups": sd["param_groups"], **state})


def load_trainer_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Load what :func:`save_trainer_state` wrote into ``optimizer``; returns the ``state``."""
    path = Path(path)
    meta = json.loads((path / TRAINER_STATE).read_text())
    state: dict[int, dict] = {}
    for key, v in load_file(str(path / OPTIMIZER_STATE)).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


@dataclass
class TrainerState:
    """Where a run stopped: the next epoch to run is ``epoch + 1``."""

    step: int  # optimizer steps done
    epoch: int  # last epoch finished (0-based)
    best: float  # best validation score so far (-1 before the first)


class Checkpointer:
    """Saves a run's ``out/last`` and ``out/best`` and resumes from ``out/last``.

    The weights are written by the caller's ``save(path, extra)`` (a full checkpoint, an
    adapter, ...), which is expected to replace the directory ``path`` atomically; ``restore``
    reads them back. ``out/last`` also holds the optimizer and trainer state.

    Example:
        >>> ckpt = Checkpointer(out, save=save, restore=restore)  # doctest: +SKIP
        >>> state = ckpt.resume(optimizer)  # None: nothing to resume
        >>> ckpt.save_last(optimizer, step=100, epoch=0, score=0.7)
        >>> ckpt.save_best_if_better(0.7, {"step": 100})
    """

    def __init__(
        self,
        out: str | Path,
        *,
        save: Callable[[Path, dict], None],
        restore: Callable[[Path], None] | None = None,
    ) -> None:
        self.out = Path(out)
        self.save, self.restore = save, restore
        self.best = -1.0  # best score offered so far (higher is better)

    @property
    def last(self) -> Path:
        return self.out / "last"

    def resume(self, optimizer: torch.optim.Optimizer) -> TrainerState | None:
        """Reload the weights and optimizer state of ``out/last``; None when there is no
        complete ``out/last`` (nothing is changed then)."""
        if not (self.last / TRAINER_STATE).is_file():
            return None
        if self.restore is None:
            raise ValueError("Checkpointer(restore=None) cannot resume; pass restore")
        self.restore(self.last)
        meta = load_trainer_state(self.last, optimizer)
        self.best = meta.get("best", -1.0)
        return TrainerState(step=meta["step"], epoch=meta["epoch"], best=self.best)

    def save_last(
        self, optimizer: torch.optim.Optimizer, *, step: int, epoch: int, score: float
    ) -> None:
        """Write ``out/last``: weights, optimizer, and the state to resume from (its ``best``
        includes ``score``)."""
        self.save(self.last, {"step": step, "epoch": epoch})
        state = {"step": step, "epoch": epoch, "best": max(self.best, score)}
        save_trainer_state(self.last, optimizer, state)

    def save_best_if_better(self, score: float, extra: dict) -> bool:
        """Write ``out/best`` (weights with ``extra`` metadata) if ``score`` beats every
        score before; returns whether it did."""
        if not score > self.best:
            return False
        self.best = score
        self.save(self.out / "best", extra)
        return True
