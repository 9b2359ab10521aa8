"""ShapeWorld: the small, fully specified world that lets steinsplat run for real on a CPU.

docs/shapeworld.md is the contract. This package holds
- `vocab`: colours, shapes, held-out pairs and the prompt grammar (`parse_prompt`);
- `world`: triangle meshes of the shapes and the room, and the shading model;
- `groundtruth`: the ground-truth renderer (`render_gt`, open3d ray casting, 4x4 supersampling);
- `metrics`: mask IoU, PSNR, colour and depth error, and `evaluate(gaussians, prompt)`;
- `set_metrics`: the same for open prompts ("a cube"): nearest mode, mode purity, diversity across seeds;
- `data`: the dataset generator (`generate`, CLI `python -m steinsplat.shapeworld.data`) and
  `ShapeWorldDataset`.
The embedded models trained on it (weights in `steinsplat/assets/shapeworld/`, training with
`python -m steinsplat.shapeworld.train prior|estimator|classifier`, figures with
`python -m steinsplat.shapeworld.evaluate`):
- `prior`: `ShapeWorldPrior`, the text- and camera-conditioned pixel-space diffusion prior;
- `estimator`: `ShapeWorldEstimator`, relative depth + camera-frame normals from noisy images;
- `classifier`: `ShapeWorldClassifier`, shape + colour (R-precision);
- `training`: checkpoints, EMA, seeded batches, the budgeted training loop.
These three classes are re-exported lazily (they import torch; loading the shipped weights and running them
imports neither diffusers nor timm, except `ShapeWorldPrior.sample`, which builds diffusers' DDIMScheduler).
"""

from .groundtruth import GTRender, render_gt
from .metrics import (
    ShapeWorldMetrics, colour_error, depth_error, eval_cameras, evaluate, mask_iou, psnr,
)
from .vocab import (
    COLOUR_NAMES, COLOURS, HELD_OUT, SHAPE_NAMES, SHAPES, SPEC_VERSION, AnyPrompt, ObjectPrompt, OpenPrompt, Prompt,
    PromptError, RoomPrompt, all_object_prompts, all_room_prompts, as_prompt, canonical_text, parse_prompt,
    prompt_modes,
)
from .world import LIGHT_DIR, WorldMesh, room_mesh, shade, shape_mesh

__all__ = [
    "COLOURS", "COLOUR_NAMES", "SHAPES", "SHAPE_NAMES", "HELD_OUT", "SPEC_VERSION",
    "ObjectPrompt", "RoomPrompt", "OpenPrompt", "Prompt", "AnyPrompt", "PromptError", "parse_prompt", "as_prompt",
    "canonical_text", "prompt_modes",
    "all_object_prompts", "all_room_prompts",
    "WorldMesh", "shape_mesh", "room_mesh", "shade", "LIGHT_DIR",
    "GTRender", "render_gt",
    "ShapeWorldMetrics", "mask_iou", "psnr", "colour_error", "depth_error", "evaluate", "eval_cameras",
]
# The dataset tools (`steinsplat.shapeworld.data`) are imported on demand: `from steinsplat.shapeworld.data import
# generate, ShapeWorldDataset`.

_LAZY = {
    "ShapeWorldPrior": ".prior",
    "ShapeWorldEstimator": ".estimator",
    "ShapeWorldClassifier": ".classifier",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
