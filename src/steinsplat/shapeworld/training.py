"""Shared training utilities for the embedded ShapeWorld models (prior, estimator, classifier).

What every run of `python -m steinsplat.shapeworld.train <model>` gets from here:
- `ensure_dataset`: open a ShapeWorldDataset folder, generating it with `data.generate` first if
  it is missing (the cache folder is given on the command line, default `data/shapeworld`);
- `EpochSampler`: seeded, resumable mini-batches (a fresh permutation per epoch drawn from
  `seed + epoch`; the state is two integers);
- `EMA`: an exponential moving average of the weights (with the usual warm-up of the decay);
- `save_checkpoint` / `load_checkpoint`: model + optimiser + EMA + step + RNG state, in the
  project's one checkpoint format (`steinsplat.checkpoint`: one safetensors file, atomic, never pickle);
- `TrainLoop`: the step loop with a rich progress bar (step, loss, it/s, ETA), plain log lines
  for non-interactive logs, periodic checkpoints, a wall-clock budget (`max_minutes`) that stops
  cleanly and saves, and Ctrl-C / SIGTERM that save and exit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor, nn

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"  # the older layout's separate JSON (read by steinsplat.checkpoint)


# ---------------------------------------------------------------------------- data
def ensure_dataset(
    root: str | Path,
    num_objects: int,
    num_rooms: int,
    seed: int,
    include_held_out: bool = False,
    kind: Optional[str] = None,
    fields: tuple[str, ...] = ("rgb", "alpha", "depth", "normal"),
    log: Callable[[str], None] = print,
    textured: bool = False,
):
    """The ShapeWorldDataset at `root`, generated first (with these counts and seed; striped objects
    too if `textured`) if absent.

    An existing dataset is used as it is; a dataset whose `include_held_out` disagrees with the
    request is an error (it would silently train the prior on the held-out pairs, or starve the
    classifier of them): choose another folder.
    """
    from .data import ShapeWorldDataset, generate

    root = Path(root)
    if not (root / "meta.json").exists():
        log(f"no dataset at {root}: generating {num_objects} objects + {num_rooms} rooms (seed {seed}, "
            f"held-out pairs {'included' if include_held_out else 'excluded'}{', half striped' if textured else ''})")
        t0 = time.perf_counter()
        generate(root, num_objects, num_rooms, seed, include_held_out=include_held_out, textured=textured)
        log(f"generated in {time.perf_counter() - t0:.0f} s")
    ds = ShapeWorldDataset(root, kind=kind, fields=fields)
    if bool(ds.meta.get("include_held_out")) != include_held_out:
        raise ValueError(
            f"the dataset at {root} was generated with include_held_out={ds.meta.get('include_held_out')}, "
            f"but this model needs include_held_out={include_held_out}; pass another --data folder"
        )
    if bool(ds.meta.get("textured")) != textured:
        raise ValueError(
            f"the dataset at {root} is {'textured' if ds.meta.get('textured') else 'plain'}, but this run asked for "
            f"{'a textured' if textured else 'a plain'} one (--textured); pass another --data folder"
        )
    return ds


class EpochSampler:
    """Mini-batches of indices into [0, n): epoch e is `randperm(n)` from the seed `seed + e`.

    Exactly resumable: `state_dict()` is (epoch, position) and batches after `load_state_dict`
    are the ones the uninterrupted run would have drawn. The last partial batch of an epoch is
    dropped (every batch has `batch_size` entries).
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise ValueError(f"the dataset has {n} samples, fewer than the batch size {batch_size}; lower --batch-size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def next(self) -> Tensor:  # [batch_size] int64
        if self.pos + self.batch_size > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._permutation(self.epoch)


# ---------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers.

    shadow <- d * shadow + (1 - d) * param, with the warm-up d = min(decay, (1 + k) / (10 + k))
    at update number k, so that early averages are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        self.num_updates += 1
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (other entries unchanged)."""
        model.load_state_dict(self.shadow, strict=False)


# ---------------------------------------------------------------------------- checkpoints
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Optimiser state_dict as safetensors-ready tensors + a JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"optim.{idx}.{name}"] = val.detach().clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    ema: Optional[EMA],
    sampler: EpochSampler,
    generator: torch.Generator,
    extra: Optional[dict] = None,
) -> Path:
    """Write `folder/checkpoint.safetensors` in steinsplat's one checkpoint format (`steinsplat.checkpoint`:
    one file, written atomically, its JSON in the safetensors metadata).

    Tensors: `model.<module>.<param>`, `ema.<key>`, `optim.<param idx>.<name>`, `rng.torch`
    (the training generator's state) and `rng.global` (torch's global CPU generator). The JSON
    holds the step, the sampler position, the optimiser's param groups and `extra`.
    """
    from ..checkpoint import write_checkpoint

    tensors: dict[str, Tensor] = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"model.{name}.{k}"] = v.detach().clone()
    if ema is not None:
        for k, v in ema.shadow.items():
            tensors[f"ema.{k}"] = v.detach().clone()
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = generator.get_state()
    tensors["rng.global"] = torch.get_rng_state()
    state = {
        "step": step,
        "sampler": sampler.state_dict(),
        "optimizer": opt_meta,
        "ema_num_updates": None if ema is None else ema.num_updates,
        "extra": extra or {},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = write_checkpoint(Path(folder) / CHECKPOINT_WEIGHTS, tensors, state)
    (Path(folder) / CHECKPOINT_STATE).unlink(missing_ok=True)  # the older layout's JSON, now stale
    return path


def has_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / CHECKPOINT_WEIGHTS).exists()


def load_checkpoint(
    folder: str | Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    ema: Optional[EMA],
    sampler: EpochSampler,
    generator: torch.Generator,
) -> dict:
    """Restore everything `save_checkpoint` wrote; returns the JSON state (with "step")."""
    from ..checkpoint import CheckpointError, read_checkpoint

    folder = Path(folder)
    if not has_checkpoint(folder):
        raise FileNotFoundError(f"no checkpoint in {folder} (expected {CHECKPOINT_WEIGHTS}); "
                                "drop --resume to start from scratch")
    try:
        tensors, state = read_checkpoint(folder / CHECKPOINT_WEIGHTS)
    except CheckpointError as exc:
        raise RuntimeError(f"{exc}; delete it to restart from scratch") from None
    for name, m in modules.items():
        prefix = f"model.{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if ema is not None:
        for k in ema.shadow:
            ema.shadow[k].copy_(tensors[f"ema.{k}"])
        ema.num_updates = int(state["ema_num_updates"] or 0)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    sampler.load_state_dict(state["sampler"])
    generator.set_state(tensors["rng.torch"])
    torch.set_rng_state(tensors["rng.global"])
    return state


# ---------------------------------------------------------------------------- loop
@dataclass
class LoopResult:
    step: int  # the step count reached (optimiser steps since the very first start)
    seconds: float  # wall time of this invocation
    stopped_by: str  # "steps", "time" or "interrupt"
    last_loss: float = math.nan
    losses: list[float] = field(default_factory=list)  # the loss of every step of this invocation


class TrainLoop:
    """Run `step_fn(step) -> loss` until `total_steps`, the wall-clock budget or Ctrl-C.

    `save_fn(step)` is called every `checkpoint_every` steps and once more at the end whatever
    ended the run (including Ctrl-C and SIGTERM), so a cut run always leaves its last state.
    """

    def __init__(
        self,
        name: str,
        total_steps: int,
        max_minutes: float,
        checkpoint_every: int,
        log_every: int = 25,
        log: Callable[[str], None] = print,
        progress: bool = True,
    ) -> None:
        self.name, self.total_steps, self.max_minutes = name, total_steps, max_minutes
        self.checkpoint_every, self.log_every, self.log, self.progress = checkpoint_every, log_every, log, progress

    def run(self, start_step: int, step_fn: Callable[[int], float], save_fn: Callable[[int], None]) -> LoopResult:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        t0 = time.perf_counter()
        budget = self.max_minutes * 60.0
        step, stopped_by = start_step, "steps"
        losses: list[float] = []
        ema_loss = math.nan

        from ..interrupts import StopOnSignal

        stop = StopOnSignal().__enter__()  # Ctrl-C / SIGTERM: finish the step, save, exit (twice: at once)
        columns = (
            TextColumn(f"[bold]{self.name}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} it/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        )
        try:
            with Progress(*columns, disable=not self.progress) as bar:
                task = bar.add_task("train", total=self.total_steps, completed=step, loss="-", rate="-")
                while step < self.total_steps:
                    if stop.requested is not None:
                        raise KeyboardInterrupt
                    if time.perf_counter() - t0 > budget:
                        stopped_by = "time"
                        break
                    loss = float(step_fn(step))
                    step += 1
                    losses.append(loss)
                    ema_loss = loss if math.isnan(ema_loss) else 0.98 * ema_loss + 0.02 * loss
                    elapsed = time.perf_counter() - t0
                    rate = (step - start_step) / max(elapsed, 1e-9)
                    bar.update(task, completed=step, loss=f"{ema_loss:.4f}", rate=f"{rate:.2f}")
                    if step % self.log_every == 0 or step == self.total_steps:
                        left = min((self.total_steps - step) / max(rate, 1e-9), max(budget - elapsed, 0.0))
                        self.log(f"[{self.name}] step {step}/{self.total_steps} loss {loss:.4f} (smoothed {ema_loss:.4f}) "
                                 f"{rate:.2f} it/s elapsed {elapsed / 60:.1f} min ETA {left / 60:.1f} min")
                    if step % self.checkpoint_every == 0 and step < self.total_steps:
                        save_fn(step)
        except KeyboardInterrupt:
            stopped_by = "interrupt"
            self.log(f"[{self.name}] interrupted at step {step}: saving")
        finally:
            stop.__exit__()
        save_fn(step)
        seconds = time.perf_counter() - t0
        self.log(f"[{self.name}] stopped by {stopped_by} at step {step} after {seconds / 60:.1f} min")
        return LoopResult(step, seconds, stopped_by, losses[-1] if losses else math.nan, losses)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def folder_size_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's and numpy's global generators; return a dedicated training generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def batches(sampler: EpochSampler) -> Iterator[Tensor]:
    while True:
        yield sampler.next()
