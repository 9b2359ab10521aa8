"""Train the embedded ShapeWorld models, one command per model:

    python -m steinsplat.shapeworld.train prior       [--max-minutes 50 --resume ...]
    python -m steinsplat.shapeworld.train classifier  [...]
    python -m steinsplat.shapeworld.train estimator   [...]

Each run generates its dataset on demand (`--data`, default `data/shapeworld`, gitignored),
keeps a resumable checkpoint in `--run-dir` (default `runs/shapeworld/<model>`), exports the EMA
weights in their folder layout to `--out` (default `steinsplat/assets/shapeworld/<model>`) at every
checkpoint and at the end, and stops cleanly (saving) at `--steps`, after `--max-minutes`, or on
Ctrl-C. Every default finishes within 60 minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .training import (
    EMA, EpochSampler, TrainLoop, count_parameters, ensure_dataset, folder_size_bytes, has_checkpoint,
    load_checkpoint, save_checkpoint, seed_everything,
)


# ---------------------------------------------------------------------------- configs
@dataclass
class CommonConfig:
    data: Path = Path("data/shapeworld")  # dataset cache folder (generated here if missing)
    out: Optional[Path] = None  # export folder; default steinsplat/assets/shapeworld/<model>
    run_dir: Optional[Path] = None  # checkpoint folder; default runs/shapeworld/<model>
    seed: int = 0  # seeds the initialisation, the batches and the noise
    steps: int = 3000  # optimiser steps in total (across resumes)
    batch_size: int = 64  # samples per step
    lr: float = 5e-4  # AdamW learning rate (constant after a linear warm-up)
    warmup_steps: int = 100  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    ema_decay: float = 0.995  # EMA of the weights (the exported weights are the EMA)
    max_minutes: float = 50.0  # wall-clock budget of this invocation; stops cleanly and saves
    checkpoint_every: int = 200  # steps between checkpoints (each also exports the EMA weights)
    log_every: int = 25  # steps between plain log lines
    resume: bool = False  # continue from the checkpoint in run_dir
    num_threads: int = 1  # torch CPU threads (1 is fastest when other jobs share the 2 cores)
    bf16: bool = True  # bfloat16 autocast on CPU (weights and optimiser stay float32; ~1.8x faster here)
    progress: bool = True  # rich progress bar (plain log lines are printed either way)


@dataclass
class PriorTrainConfig(CommonConfig):
    num_objects: int = 30000  # object samples to generate if the dataset is missing
    num_rooms: int = 3000  # room samples to generate if the dataset is missing
    resolution: int = 32  # model-space image side (32: ~1 s a step here; 64 costs ~6x, see the model card)
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # UNet widths per level
    layers_per_block: int = 2  # ResNet blocks per UNet level
    text_dim: int = 64  # pooled prompt embedding size
    p_drop_text: float = 0.12  # classifier-free dropout of the prompt
    p_drop_camera: float = 0.12  # classifier-free dropout of the camera features (independent)
    camera_encoding: str = "fourier-rays"  # "fourier-rays" (multi-frequency angles + Plucker ray channels) or "angles" (the first prior's)
    azimuth_frequencies: tuple[int, ...] = (1, 2, 3, 4)  # k of sin/cos(k az) in the camera features
    guidance_scale: float = 1.0  # default classifier-free guidance stored with the weights (the evaluate sweep chose 1.0: higher scales hurt this short-trained prior)
    steps: int = 6000  # upper bound; on this CPU the wall-clock budget ends the run first (4,523 steps in 50 min)
    max_minutes: float = 50.0  # wall-clock budget (the shipped run used all 50)
    textured: bool = False  # train on a dataset with half the objects striped (texture.py); needs its own --data folder
    init_from: Optional[Path] = None  # fine-tune from this prior folder (its UNet and text encoder; the
    # token embedding grows by the words added since, e.g. "striped"); the UNet/text sizes above are then ignored


@dataclass
class ClassifierTrainConfig(CommonConfig):
    data: Path = Path("data/shapeworld-classifier")  # objects only, held-out pairs included
    num_objects: int = 12000  # object samples to generate if the dataset is missing
    width: int = 16  # channels of the first stage (x1, x2, x4, x4 per stage)
    steps: int = 500  # optimiser steps (under a minute here)
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # AdamW learning rate
    warmup_steps: int = 50  # linear warm-up
    weight_decay: float = 1e-4  # AdamW weight decay
    ema_decay: float = 0.98  # short run, short EMA horizon
    max_minutes: float = 8.0  # wall-clock budget
    checkpoint_every: int = 100  # steps between checkpoints/exports


@dataclass
class EstimatorTrainConfig(CommonConfig):
    num_objects: int = 30000  # as the prior's dataset (shared cache)
    num_rooms: int = 3000  # as the prior's dataset
    prior: Optional[Path] = None  # prior folder whose schedule and resolution to match; default steinsplat/assets/shapeworld/prior
    width: int = 24  # channels of the first level (x2, x4 deeper)
    p_clean: float = 0.25  # share of samples at t = 0 (clean images); the rest uniform over all timesteps
    normal_weight: float = 1.0  # weight of the normal (cosine) loss against the depth loss
    steps: int = 4000  # optimiser steps (~17 min here)
    batch_size: int = 32  # images per step
    lr: float = 1e-3  # AdamW learning rate
    ema_decay: float = 0.995  # EMA of the weights (exported)
    max_minutes: float = 20.0  # wall-clock budget
    checkpoint_every: int = 200  # steps between checkpoints/exports


# ---------------------------------------------------------------------------- shared plumbing
def _log_to(path: Optional[Path]) -> Callable[[str], None]:
    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        if path is not None:
            with open(path, "a") as f:
                f.write(line + "\n")

    return log


def _paths(cfg: CommonConfig, model: str) -> tuple[Path, Path]:
    from .prior import default_assets_dir

    out = cfg.out if cfg.out is not None else default_assets_dir() / model
    run = cfg.run_dir if cfg.run_dir is not None else Path("runs/shapeworld") / model
    run.mkdir(parents=True, exist_ok=True)
    return out, run


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / max(warmup, 1))


def _autocast(cfg: CommonConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16)


class _Run:
    """Optimiser + EMA + sampler + generator + checkpoint/export wiring around one model."""

    def __init__(self, name: str, cfg: CommonConfig, model: torch.nn.Module, n: int, export: Callable[[torch.nn.Module, Path], None]):
        self.name, self.cfg, self.model = name, cfg, model
        self.out, self.run_dir = _paths(cfg, name)
        self.log = _log_to(self.run_dir / "train.log")
        torch.set_num_threads(cfg.num_threads)
        self.gen = seed_everything(cfg.seed)
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.ema = EMA(model, cfg.ema_decay)
        self.sampler = EpochSampler(n, cfg.batch_size, cfg.seed)
        self.export_fn = export
        self.start_step = 0
        self.seconds_before = 0.0
        if cfg.resume:
            if not has_checkpoint(self.run_dir):
                raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir}; drop --resume to start from scratch")
            state = load_checkpoint(self.run_dir, {"model": model}, self.opt, self.ema, self.sampler, self.gen)
            self.start_step = int(state["step"])
            self.seconds_before = float(state["extra"].get("train_seconds", 0.0))
            self.log(f"resumed {name} from {self.run_dir} at step {self.start_step}")
        self.t_start = time.perf_counter()

    def set_lr(self, step: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * _lr_lambda(self.cfg.warmup_steps)(step)

    def optimise(self, loss: Tensor, step: int) -> float:
        self.set_lr(step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.ema.update(self.model)
        return float(loss.detach())

    def train_seconds(self) -> float:
        return self.seconds_before + (time.perf_counter() - self.t_start)

    def save(self, step: int) -> None:
        extra = {"config": json.loads(json.dumps(asdict(self.cfg), default=str)), "train_seconds": self.train_seconds()}
        save_checkpoint(self.run_dir, step, {"model": self.model}, self.opt, self.ema, self.sampler, self.gen, extra)
        self.export(step)

    def export(self, step: int) -> None:
        """Write the EMA weights to `out` (the model's own weights are restored afterwards)."""
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.ema.copy_to(self.model)
        info = {"steps": step, "train_minutes": round(self.train_seconds() / 60.0, 1),
                "config": json.loads(json.dumps(asdict(self.cfg), default=str))}
        try:
            self.export_fn(self.model, self.out, info)
        finally:
            self.model.load_state_dict(backup)
        self.log(f"exported EMA weights at step {step} to {self.out} ({folder_size_bytes(self.out) / 1e6:.2f} MB)")

    def loop(self, step_fn: Callable[[int], float]):
        self.log(f"{self.name}: {count_parameters(self.model):,} parameters; training steps {self.start_step}..{self.cfg.steps}, "
                 f"batch {self.cfg.batch_size}, budget {self.cfg.max_minutes} min")
        loop = TrainLoop(self.name, self.cfg.steps, self.cfg.max_minutes, self.cfg.checkpoint_every, self.cfg.log_every,
                         self.log, self.cfg.progress)
        return loop.run(self.start_step, step_fn, self.save)


def _chunked(n: int, size: int = 2048):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


# ---------------------------------------------------------------------------- prior
def prior_tensors(ds, resolution: int, tokenizer, encoding: str = "angles",
                  azimuth_frequencies: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, Tensor]:
    """Everything the prior trains on, pre-computed once: images (uint8, model resolution),
    token ids/masks and camera features per sample."""
    from .data import KINDS
    from .prior import camera_features_from_angles
    from .vocab import canonical_text

    a = ds.arrays
    n = len(ds)
    imgs = torch.empty((n, 3, resolution, resolution), dtype=torch.uint8)
    for lo, hi in _chunked(n):
        x = torch.from_numpy(a["rgb"][lo:hi]).permute(0, 3, 1, 2).float()  # [b, 3, 64, 64] in 0..255
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="area")
        imgs[lo:hi] = x.round().clamp(0, 255).to(torch.uint8)
    texts = [canonical_text(ds.prompt(i)) for i in range(n)]
    uniq = sorted(set(texts))
    ids_u, mask_u = tokenizer(uniq)
    where = {t: i for i, t in enumerate(uniq)}
    row = torch.tensor([where[t] for t in texts])
    kind = torch.from_numpy(a["kind"].astype(np.int64))
    cams = camera_features_from_angles(torch.from_numpy(a["elevation"]), torch.from_numpy(a["azimuth"]),
                                       torch.from_numpy(a["distance"]), (kind == KINDS.index("room")).float(),
                                       encoding, azimuth_frequencies)
    return {"images": imgs, "ids": ids_u[row], "mask": mask_u[row], "cams": cams}


def train_prior(cfg: PriorTrainConfig):
    from .prior import PriorConfig, ShapeWorldPrior

    ds = ensure_dataset(cfg.data, cfg.num_objects, cfg.num_rooms, cfg.seed, include_held_out=False, fields=("rgb",),
                        textured=cfg.textured)
    torch.manual_seed(cfg.seed)
    if cfg.init_from is not None:
        from .finetune import prior_from_folder

        prior = prior_from_folder(cfg.init_from, cfg.guidance_scale)
    else:
        prior = ShapeWorldPrior.from_config(
            PriorConfig(resolution=cfg.resolution, text_dim=cfg.text_dim, default_guidance_scale=cfg.guidance_scale,
                        camera_encoding=cfg.camera_encoding, azimuth_frequencies=cfg.azimuth_frequencies),
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block)
    data = prior_tensors(ds, cfg.resolution, prior.tokenizer, prior.config.camera_encoding, prior.config.azimuth_frequencies)
    del ds

    def export(model, out: Path, info: dict) -> None:
        model.config.training = {**info, "dataset": str(cfg.data), "num_samples": int(data["images"].shape[0])}
        model.save_pretrained(out)

    run = _Run("prior", cfg, prior, data["images"].shape[0], export)
    prior.train()

    def step(i: int) -> float:
        idx = run.sampler.next()
        x0 = data["images"][idx].float() / 127.5 - 1.0  # [B, 3, R, R] in [-1, 1]
        with _autocast(cfg):
            loss = prior.training_loss(x0, data["ids"][idx], data["mask"][idx], data["cams"][idx], run.gen,
                                       cfg.p_drop_text, cfg.p_drop_camera)
        return run.optimise(loss.float(), i)

    return run.loop(step)


# ---------------------------------------------------------------------------- classifier
def _export_with_info(model, out: Path, info: dict) -> None:
    """Save a model folder with its training record in the config."""
    model.config.training = info
    model.save_pretrained(out)


def train_classifier(cfg: ClassifierTrainConfig):
    from .classifier import ClassifierConfig, ShapeWorldClassifier, augment, classifier_tensors

    ds = ensure_dataset(cfg.data, cfg.num_objects, 0, cfg.seed + 1, include_held_out=True, kind="object", fields=("rgb",))
    data = classifier_tensors(ds)
    del ds
    torch.manual_seed(cfg.seed)
    model = ShapeWorldClassifier(ClassifierConfig(width=cfg.width))

    run = _Run("classifier", cfg, model, data["images"].shape[0], _export_with_info)
    model.train()

    def step(i: int) -> float:
        idx = run.sampler.next()
        x = augment(data["images"][idx].float() / 255.0, run.gen)  # [B, 3, 64, 64] in [0, 1]
        with _autocast(cfg):
            loss = model.loss(x, data["shape"][idx], data["colour"][idx])
        return run.optimise(loss.float(), i)

    return run.loop(step)


# ---------------------------------------------------------------------------- estimator
def train_estimator(cfg: EstimatorTrainConfig):
    from .estimator import EstimatorConfig, ShapeWorldEstimator, estimator_tensors
    from .prior import default_assets_dir

    prior_dir = cfg.prior if cfg.prior is not None else default_assets_dir() / "prior"
    from diffusers import DDPMScheduler

    from .prior import PRIOR_CONFIG_NAME, PriorConfig, scheduler_config

    if (prior_dir / PRIOR_CONFIG_NAME).exists():
        sched = DDPMScheduler.from_pretrained(prior_dir / "scheduler")
        resolution = PriorConfig(**json.loads((prior_dir / PRIOR_CONFIG_NAME).read_text())).resolution
    else:
        sched, resolution = DDPMScheduler(**scheduler_config()), 32
        print(f"note: no prior at {prior_dir}; using the default prior schedule and resolution {resolution}")
    ds = ensure_dataset(cfg.data, cfg.num_objects, cfg.num_rooms, cfg.seed, include_held_out=False)
    data = estimator_tensors(ds, resolution)
    del ds
    torch.manual_seed(cfg.seed)
    model = ShapeWorldEstimator(EstimatorConfig(resolution=resolution, width=cfg.width,
                                                num_train_timesteps=int(sched.config.num_train_timesteps)),
                                alphas_cumprod=sched.alphas_cumprod)

    run = _Run("estimator", cfg, model, data["images"].shape[0], _export_with_info)
    model.train()

    def step(i: int) -> float:
        idx = run.sampler.next()
        with _autocast(cfg):
            loss = model.training_loss(data, idx, run.gen, cfg.p_clean, cfg.normal_weight)
        return run.optimise(loss.float(), i)

    return run.loop(step)


TRAINERS = {"prior": (PriorTrainConfig, train_prior), "classifier": (ClassifierTrainConfig, train_classifier),
            "estimator": (EstimatorTrainConfig, train_estimator)}


def main(argv: Optional[list[str]] = None) -> None:
    import tyro

    from typing import Annotated

    Choice = Union[tuple(Annotated[cls, tyro.conf.subcommand(name, default=cls())] for name, (cls, _) in TRAINERS.items())]
    cfg = tyro.cli(Choice, args=argv, prog="python -m steinsplat.shapeworld.train", description=__doc__)
    for name, (cls, fn) in TRAINERS.items():
        if type(cfg) is cls:
            result = fn(cfg)
            print(json.dumps({"model": name, "step": result.step, "minutes": round(result.seconds / 60, 2),
                              "stopped_by": result.stopped_by, "last_loss": result.last_loss}))
            return


if __name__ == "__main__":
    main()
