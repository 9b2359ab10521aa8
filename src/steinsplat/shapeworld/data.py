"""ShapeWorld dataset: generation to `.npz` shards, and a torch `Dataset` that reads them.

    python -m steinsplat.shapeworld.data --out data/shapeworld --objects 30000 --rooms 3000 --seed 0

Layout of `out_dir`:
    meta.json                   spec version, seed, counts, vocabulary, encodings, shard list
    objects-00000.npz ...       object samples (orbit cameras, OrbitSampler training ranges)
    rooms-00000.npz ...         room samples (inside-out cameras, InsideOutSampler ranges)
Each shard holds N samples (np.load(..., allow_pickle=False)):
    rgb         uint8   [N, H, W, 3]  round(255 * rgb), white background for objects
    alpha       uint8   [N, H, W, 1]  round(255 * alpha)
    depth       float16 [N, H, W, 1]  camera z in metres, 0 where empty
    normal      int8    [N, H, W, 3]  round(127 * world unit normal), 0 where empty
    viewmat     float32 [N, 4, 4]     world-to-camera (OpenCV axes)
    K           float32 [N, 3, 3]
    elevation   float32 [N]           degrees (rooms: pitch)
    azimuth     float32 [N]           degrees (rooms: yaw)
    distance    float32 [N]           metres (rooms: NaN)
    kind        uint8   [N]           0 object, 1 room
    prompt_ids  int16   [N, 2]        objects: (colour id, shape id); rooms: (wall id, floor id)
    index       int64   [N]           sample number within its kind
  and, only in textured datasets (`--textured`, meta "textured": true):
    texture     uint8   [N]           0 plain, 1 + index into texture.TEXTURE_NAMES ("striped")
    phase       float32 [N]           the stripe phase in metres (NaN for plain samples and rooms)

Everything is drawn from `seed` up front (prompts balanced over the allowed pairs, then
shuffled; cameras from the samplers), so the same seed gives identical arrays whatever the
shard size. Held-out colour/shape pairs are excluded unless `include_held_out` (in every texture).
A textured dataset balances its objects over the plain and the striped pairs (half each) and draws
each striped sample's phase uniformly in [0, STRIPE_PERIOD) from its own seed stream; without
`textured` nothing of that is drawn or written, so plain datasets keep their bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras, InsideOutSampler, OrbitSampler
from .groundtruth import render_gt
from .texture import STRIPE_PERIOD, TEXTURE_NAMES
from .vocab import (
    COLOUR_NAMES, COLOURS, HELD_OUT, SHAPE_NAMES, SPEC_VERSION, ObjectPrompt, Prompt, RoomPrompt,
    all_object_prompts, all_room_prompts, canonical_text,
)

FORMAT_VERSION = 1
SHARD_SIZE = 2048  # samples per shard (~7 MB compressed at 64x64)
RENDER_BATCH = 128  # samples per render_gt call (progress granularity)
SUPERSAMPLE = 4  # the spec's 4x4 anti-aliasing
NORMAL_SCALE = 127.0
KINDS = ("object", "room")
FIELDS = ("rgb", "alpha", "depth", "normal", "viewmat", "K", "elevation", "azimuth", "distance", "kind", "prompt_ids", "index")
TEXTURE_FIELDS = ("texture", "phase")  # only in textured datasets


# ---------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """What to render for one kind: a prompt and a camera per sample."""

    kind: str  # "object" or "room"
    prompts: list[Prompt]
    cameras: Cameras
    phases: Optional[list[Optional[float]]] = None  # textured datasets: stripe phase per sample (None: plain)

    def __len__(self) -> int:
        return len(self.prompts)


def _torch_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def _balanced(pool: Sequence[Prompt], n: int, rng: np.random.Generator) -> list[Prompt]:
    """n prompts cycling through `pool` (counts differ by at most one), in random order."""
    order = rng.permutation(np.arange(n) % max(len(pool), 1))
    return [pool[i] for i in order]


def make_plans(
    num_objects: int, num_rooms: int, seed: int, resolution: int = 64, include_held_out: bool = False,
    textured: bool = False,
) -> tuple[Plan, Plan]:
    """Prompts and cameras of every sample, drawn from `seed` only (and the stripe phases if `textured`)."""
    if num_objects < 0 or num_rooms < 0:
        raise ValueError(f"sample counts must be >= 0, got objects={num_objects}, rooms={num_rooms}")
    seqs = np.random.SeedSequence(seed).spawn(5 if textured else 4)  # the 5th child: the phases
    s_obj_p, s_obj_c, s_room_p, s_room_c = seqs[:4]
    pool = all_object_prompts(include_held_out)
    if textured:
        pool = pool + [q for t in TEXTURE_NAMES for q in all_object_prompts(include_held_out, t)]
    obj_prompts = _balanced(pool, num_objects, np.random.default_rng(s_obj_p))
    room_prompts = _balanced(all_room_prompts(), num_rooms, np.random.default_rng(s_room_p))
    obj_cams = OrbitSampler(width=resolution, height=resolution).sample(
        num_objects, torch.Generator().manual_seed(_torch_seed(s_obj_c))
    )
    room_cams = InsideOutSampler(width=resolution, height=resolution).sample(
        num_rooms, torch.Generator().manual_seed(_torch_seed(s_room_c))
    )
    obj_phases = room_phases = None
    if textured:
        u = np.random.default_rng(seqs[4]).random(num_objects) * STRIPE_PERIOD  # [N] metres
        obj_phases = [float(np.float32(u[i])) if p.texture is not None else None for i, p in enumerate(obj_prompts)]
        room_phases = [None] * num_rooms
    return (Plan("object", obj_prompts, obj_cams, obj_phases), Plan("room", room_prompts, room_cams, room_phases))


# ---------------------------------------------------------------------------- rendering
def _prompt_ids(p: Prompt) -> tuple[int, int]:
    return (p.colour_id, p.shape_id) if isinstance(p, ObjectPrompt) else (p.wall_id, p.floor_id)


def render_samples(
    prompts: Sequence[Prompt], cameras: Cameras, kind: str, first_index: int = 0,
    on_progress: Optional[Callable[[int], None]] = None, phases: Optional[Sequence[Optional[float]]] = None,
) -> dict[str, np.ndarray]:
    """Render and encode samples into the shard arrays (see the module docstring); `phases` (one per
    sample, None for plain) makes a textured shard, with the texture and phase arrays."""
    n = len(prompts)
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, n, RENDER_BATCH):
        hi = min(n, lo + RENDER_BATCH)
        gt = render_gt(prompts[lo:hi], cameras[lo:hi], supersample=SUPERSAMPLE,
                       phase=None if phases is None else list(phases[lo:hi]))
        parts.append({
            "rgb": (gt.rgb.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy(),
            "alpha": (gt.alpha.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy(),
            "depth": gt.depth.to(torch.float16).numpy(),
            "normal": (gt.normal * NORMAL_SCALE).round().clamp(-127, 127).to(torch.int8).numpy(),
        })
        if on_progress is not None:
            on_progress(hi - lo)
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in ("rgb", "alpha", "depth", "normal")}
    nan = torch.full((n,), float("nan"))

    def f32(t: Optional[Tensor]) -> np.ndarray:
        return (nan if t is None else t).float().numpy().astype(np.float32)

    arrays.update(
        viewmat=cameras.viewmats.float().numpy().astype(np.float32),
        K=cameras.Ks.float().numpy().astype(np.float32),
        elevation=f32(cameras.elevation),
        azimuth=f32(cameras.azimuth),
        distance=f32(cameras.distance),
        kind=np.full(n, KINDS.index(kind), dtype=np.uint8),
        prompt_ids=np.asarray([_prompt_ids(p) for p in prompts], dtype=np.int16).reshape(n, 2),
        index=np.arange(first_index, first_index + n, dtype=np.int64),
    )
    if phases is not None:
        arrays["texture"] = np.asarray([_texture_id(p) for p in prompts], dtype=np.uint8).reshape(n)
        arrays["phase"] = np.asarray([np.nan if ph is None else ph for ph in phases], dtype=np.float32).reshape(n)
    return arrays


def _texture_id(p: Prompt) -> int:
    """0 plain (and rooms), 1 + index into TEXTURE_NAMES."""
    t = getattr(p, "texture", None)
    return 0 if t is None else 1 + TEXTURE_NAMES.index(t)


# ---------------------------------------------------------------------------- writing
def _atomic_write_bytes(path: Path, writer: Callable[[object], None]) -> None:
    """Write through `writer(file)` to a temporary file next to `path`, then os.replace it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_shard(path: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """Atomically write one `.npz` shard."""
    save = np.savez_compressed if compress else np.savez
    _atomic_write_bytes(path, lambda f: save(f, **arrays))


def vocab_json() -> dict:
    return {
        "colours": {c: list(COLOURS[c]) for c in COLOUR_NAMES},
        "shapes": list(SHAPE_NAMES),
        "held_out": [[p.colour, p.shape] for p in HELD_OUT],
    }


@dataclass
class GenerateReport:
    out_dir: Path
    num_objects: int
    num_rooms: int
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return (self.num_objects + self.num_rooms) / max(self.seconds, 1e-9)


def generate(
    out_dir: str | Path,
    num_objects: int,
    num_rooms: int,
    seed: int,
    resolution: int = 64,
    include_held_out: bool = False,
    shard_size: int = SHARD_SIZE,
    compress: bool = True,
    overwrite: bool = False,
    on_progress: Optional[Callable[[int], None]] = None,
    textured: bool = False,
) -> GenerateReport:
    """Render a ShapeWorld dataset into `out_dir` (shards + meta.json, written last).

    textured: half the objects striped (random phase per sample), see the module docstring.

    on_progress: called with the number of samples just rendered (for progress bars).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    if meta_path.exists():
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds a ShapeWorld dataset (meta.json); choose another directory "
                "or pass overwrite=True (--overwrite) to replace it"
            )
        old = json.loads(meta_path.read_text())
        meta_path.unlink()  # the directory is no dataset until the new meta.json lands
        for s in old.get("shards", []):
            (out / s["file"]).unlink(missing_ok=True)

    t0 = time.perf_counter()
    report = GenerateReport(out, num_objects, num_rooms)
    shards_meta = []
    for plan in make_plans(num_objects, num_rooms, seed, resolution, include_held_out, textured):
        for k, lo in enumerate(range(0, len(plan), shard_size)):
            hi = min(len(plan), lo + shard_size)
            arrays = render_samples(plan.prompts[lo:hi], plan.cameras[lo:hi], plan.kind, lo, on_progress,
                                    None if plan.phases is None else plan.phases[lo:hi])
            name = f"{plan.kind}s-{k:05d}.npz"
            save_shard(out / name, arrays, compress)
            shards_meta.append({"file": name, "kind": plan.kind, "count": hi - lo})
            report.shards.append(name)
    meta = {
        "spec_version": SPEC_VERSION,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "num_objects": num_objects,
        "num_rooms": num_rooms,
        "resolution": resolution,
        "supersample": SUPERSAMPLE,
        "include_held_out": include_held_out,
        "shard_size": shard_size,
        "vocab": vocab_json(),
        "kinds": list(KINDS),
        "prompt_ids": "objects: (colour id, shape id); rooms: (wall id, floor id); ids index vocab.colours / vocab.shapes",
        "encoding": {
            "rgb": "uint8 round(255 * rgb)", "alpha": "uint8 round(255 * alpha)", "depth": "float16 metres",
            "normal": f"int8 round({NORMAL_SCALE:g} * unit normal)",
        },
        "shards": shards_meta,
    }
    if textured:
        meta["textured"] = True
        meta["textures"] = {"names": list(TEXTURE_NAMES), "stripe_period": STRIPE_PERIOD,
                            "texture": "uint8: 0 plain, 1 + index into names", "phase": "float32 metres, NaN if plain"}
    _atomic_write_bytes(meta_path, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    report.seconds = time.perf_counter() - t0
    return report


# ---------------------------------------------------------------------------- reading
class ShapeWorldSample(NamedTuple):
    """One sample as tensors (default_collate stacks these into a batch of the same type)."""

    rgb: Tensor  # [H, W, 3] float32 in [0, 1]
    alpha: Tensor  # [H, W, 1] float32 in [0, 1]
    depth: Tensor  # [H, W, 1] float32 metres, 0 where empty
    normal: Tensor  # [H, W, 3] float32 unit (0 where empty)
    viewmat: Tensor  # [4, 4]
    K: Tensor  # [3, 3]
    elevation: Tensor  # [] degrees (rooms: pitch)
    azimuth: Tensor  # [] degrees (rooms: yaw)
    distance: Tensor  # [] metres (rooms: NaN)
    kind: Tensor  # [] int64, 0 object / 1 room
    prompt_ids: Tensor  # [2] int64, (colour, shape) or (wall, floor)
    text: str  # canonical prompt text


def prompt_from_ids(kind: int, ids: Sequence[int], texture: int = 0) -> Prompt:
    a, b = int(ids[0]), int(ids[1])
    if KINDS[kind] == "object":
        return ObjectPrompt(COLOUR_NAMES[a], SHAPE_NAMES[b], None if int(texture) == 0 else TEXTURE_NAMES[int(texture) - 1])
    return RoomPrompt(COLOUR_NAMES[a], COLOUR_NAMES[b])


class ShapeWorldDataset(torch.utils.data.Dataset):
    """The samples of a generated dataset, held in memory in their stored (compact) encoding.

    kind: "object", "room" or None (both). fields: which image arrays to load (the others come
    back as empty tensors, which saves memory, e.g. `fields=("rgb",)` for a prior).
    """

    IMAGE_FIELDS = ("rgb", "alpha", "depth", "normal")

    def __init__(self, root: str | Path, kind: Optional[str] = None, fields: Sequence[str] = IMAGE_FIELDS) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(
                f"no ShapeWorld dataset at {self.root} (meta.json missing: generation unfinished or never run); "
                "create one with `python -m steinsplat.shapeworld.data --out <dir>`"
            )
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.root}: format version {self.meta.get('format_version')} is not {FORMAT_VERSION}; regenerate it")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
        bad = set(fields) - set(self.IMAGE_FIELDS)
        if bad:
            raise ValueError(f"unknown fields {sorted(bad)}; choose from {self.IMAGE_FIELDS}")
        self.fields = tuple(fields)
        keep = [f for f in FIELDS if f in self.fields or f not in self.IMAGE_FIELDS]
        if self.meta.get("textured"):
            keep += list(TEXTURE_FIELDS)
        parts: dict[str, list[np.ndarray]] = {f: [] for f in keep}
        for s in self.meta["shards"]:
            if kind is not None and s["kind"] != kind:
                continue
            with np.load(self.root / s["file"], allow_pickle=False) as z:
                for f in keep:
                    parts[f].append(z[f])
        self.arrays = {f: (np.concatenate(v) if v else np.zeros((0,))) for f, v in parts.items()}

    def __len__(self) -> int:
        return int(self.arrays["kind"].shape[0])

    def prompt(self, i: int) -> Prompt:
        tex = int(self.arrays["texture"][i]) if "texture" in self.arrays else 0
        return prompt_from_ids(int(self.arrays["kind"][i]), self.arrays["prompt_ids"][i], tex)

    def __getitem__(self, i: int) -> ShapeWorldSample:
        a = self.arrays
        empty = torch.empty(0)

        def img(name: str, decode: Callable[[np.ndarray], Tensor]) -> Tensor:
            return decode(a[name][i]) if name in self.fields else empty

        normal = img("normal", lambda x: torch.from_numpy(x.astype(np.float32)))
        if normal.numel():
            norm = normal.norm(dim=-1, keepdim=True)
            normal = torch.where(norm > 0, normal / norm.clamp_min(1e-6), normal)
        return ShapeWorldSample(
            rgb=img("rgb", lambda x: torch.from_numpy(x.astype(np.float32) / 255.0)),
            alpha=img("alpha", lambda x: torch.from_numpy(x.astype(np.float32) / 255.0)),
            depth=img("depth", lambda x: torch.from_numpy(x.astype(np.float32))),
            normal=normal,
            viewmat=torch.from_numpy(a["viewmat"][i].copy()),
            K=torch.from_numpy(a["K"][i].copy()),
            elevation=torch.tensor(float(a["elevation"][i])),
            azimuth=torch.tensor(float(a["azimuth"][i])),
            distance=torch.tensor(float(a["distance"][i])),
            kind=torch.tensor(int(a["kind"][i])),
            prompt_ids=torch.from_numpy(a["prompt_ids"][i].astype(np.int64)),
            text=canonical_text(self.prompt(i)),
        )


# ---------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m steinsplat.shapeworld.data", description="Render a ShapeWorld dataset (docs/shapeworld.md)."
    )
    ap.add_argument("--out", type=Path, default=Path("data/shapeworld"), help="output directory")
    ap.add_argument("--objects", type=int, default=30000, help="number of object samples")
    ap.add_argument("--rooms", type=int, default=3000, help="number of room samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=64, help="image side in pixels")
    ap.add_argument("--include-held-out", action="store_true", help="also render the 6 held-out colour/shape pairs")
    ap.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="samples per .npz shard")
    ap.add_argument("--no-compress", action="store_true", help="write plain .npz (slightly faster, ~10x larger)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    ap.add_argument("--textured", action="store_true",
                    help="half the objects striped, each with a random stripe phase (texture.py; the textured prior's data)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console()
    total = args.objects + args.rooms
    columns = (
        TextColumn("[bold]ShapeWorld[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    start = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("render", total=total, rate="")

        def tick(n: int) -> None:
            progress.advance(task, n)
            done = progress.tasks[0].completed
            progress.update(task, rate=f"{done / max(time.perf_counter() - start, 1e-9):.0f} samples/s")

        report = generate(
            args.out, args.objects, args.rooms, args.seed, args.resolution, args.include_held_out,
            args.shard_size, compress=not args.no_compress, overwrite=args.overwrite, on_progress=tick,
            textured=args.textured,
        )
    console.print(
        f"wrote {total} samples ({args.objects} objects, {args.rooms} rooms) in {len(report.shards)} shards to "
        f"{report.out_dir} in {report.seconds:.1f} s: {report.samples_per_second:.1f} samples/s"
    )


if __name__ == "__main__":
    main()
