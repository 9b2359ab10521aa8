"""Measure the quality figures of the embedded ShapeWorld models (issue 3) and write them as JSON + Markdown.

    python -m steinsplat.shapeworld.evaluate [--assets steinsplat/assets/shapeworld] [--steps 50] [--sweep 1,1.5,2,3] [--only prior]

1. Classifier on ground truth: every colour/shape pair (56, held-out pairs included) at the 8
   evaluation cameras plus `--random-views` random orbit cameras each (a seed unused in training);
   shape and colour accuracy, overall and on the held-out pairs.
2. Prior samples: every pair at the 8 evaluation cameras (el 20, d 1.8, az 0..315), DDIM with
   `--steps` steps and guidance `--guidance`; the classifier's shape/colour accuracy on the trained
   pairs and on the held-out pairs separately; mean mask IoU against the ground truth of the same
   camera. Sample mask: the sample is up-sampled to 64x64 (bilinear) and a pixel is foreground when
   some channel differs from white by more than MASK_DIFF (0.15), i.e. max_c (1 - rgb_c) > 0.15;
   ground-truth mask: alpha > 0.5 (the spec's). The same rule applied to the ground-truth RGB is
   reported as a sanity check of the rule (`gt_rule_iou`, should be near 1).
3. View test of the prior (`--only view`): the shapes whose look changes with azimuth (cube and
   pyramid, all 8 colours each, held-out pairs included) sampled at az 0 and az 45 (el 20, d 1.8),
   `--view-seeds` samples per pair and azimuth; each sample is assigned to the ground-truth view
   (az 0 or 45, same shape) whose mask its mask matches better (IoU, the mask rule of 2.); view
   accuracy = share assigned to the azimuth it was sampled at (0.5 is chance: a prior blind to
   azimuth). A sample sheet (`view_samples.png`) shows each pair over az 0, 15, ..., 90 under the
   ground truth of the two shapes.
4. Estimator: relative-depth and normal errors on fresh ground-truth renders (objects + rooms,
   a seed unused in training) at noise levels t in TIMESTEPS (t = 0 is the clean image).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..cameras import OrbitSampler, object_eval_cameras
from .groundtruth import render_gt
from .vocab import ObjectPrompt, all_object_prompts, canonical_text

MASK_DIFF = 0.15
VIEW_SHAPES = ("cube", "pyramid")  # the shapes whose look changes with azimuth (4-fold symmetric)
VIEW_AZIMUTHS = (0.0, 45.0)  # face-on and edge-on
SHEET_AZIMUTHS = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0)
TIMESTEPS = (0, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def sample_mask(rgb: torch.Tensor, size: int = 64) -> torch.Tensor:
    """[B, R, R, 3] in [0, 1] -> bool [B, size, size, 1]: bilinear up-sampling, then max_c(1 - rgb_c) > MASK_DIFF."""
    x = rgb.permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((1.0 - x).amax(1, keepdim=True) > MASK_DIFF).permute(0, 2, 3, 1)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # bool [B, H, W, 1] -> [B]
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _acc(pred: torch.Tensor, true: torch.Tensor) -> float:
    return float((pred == true).float().mean()) if true.numel() else float("nan")


def eval_classifier(clf, random_views: int, seed: int = 4242) -> dict:
    prompts = all_object_prompts(include_held_out=True)
    cams8 = object_eval_cameras()
    imgs, shape_ids, colour_ids, held = [], [], [], []
    g = torch.Generator().manual_seed(seed)
    for p in prompts:
        cams = cams8 if random_views == 0 else type(cams8).cat([cams8, OrbitSampler().sample(random_views, g)])
        gt = render_gt([p] * len(cams), cams)
        imgs.append(gt.rgb)
        shape_ids += [p.shape_id] * len(cams)
        colour_ids += [p.colour_id] * len(cams)
        held += [p.held_out] * len(cams)
    x = torch.cat(imgs)
    out = clf.classify(x)
    s, c, h = torch.tensor(shape_ids), torch.tensor(colour_ids), torch.tensor(held)
    return {
        "images": int(x.shape[0]),
        "shape_acc": _acc(out.shape_ids, s), "colour_acc": _acc(out.colour_ids, c),
        "held_out_shape_acc": _acc(out.shape_ids[h], s[h]), "held_out_colour_acc": _acc(out.colour_ids[h], c[h]),
    }


def eval_prior(prior, clf, steps: int, guidance: float, seed: int = 0, batch_pairs: int = 8,
               save_grid: Optional[Path] = None) -> dict:
    prompts = all_object_prompts(include_held_out=True)
    cams = object_eval_cameras()
    n = len(cams)
    g = torch.Generator().manual_seed(seed)
    per_pair = {}
    samples_all = []
    t0 = time.perf_counter()
    for lo in range(0, len(prompts), batch_pairs):
        chunk = prompts[lo: lo + batch_pairs]
        texts = [canonical_text(p) for p in chunk for _ in range(n)]
        cam_b = type(cams).cat([cams] * len(chunk))
        samples = prior.sample(texts, cam_b, steps=steps, guidance_scale=guidance, generator=g)  # [b, R, R, 3]
        out = clf.classify(samples)
        for k, p in enumerate(chunk):
            sl = slice(k * n, (k + 1) * n)
            gt = render_gt([p] * n, cams)
            gt_mask = gt.alpha > 0.5
            per_pair[canonical_text(p)] = {
                "held_out": p.held_out,
                "shape_acc": _acc(out.shape_ids[sl], torch.full((n,), p.shape_id)),
                "colour_acc": _acc(out.colour_ids[sl], torch.full((n,), p.colour_id)),
                "mask_iou": float(_iou(sample_mask(samples[sl]), gt_mask).mean()),
                "gt_rule_iou": float(_iou(sample_mask(gt.rgb), gt_mask).mean()),
            }
        samples_all.append(samples)
    seconds = time.perf_counter() - t0

    def agg(held: bool, key: str) -> float:
        vals = [v[key] for v in per_pair.values() if v["held_out"] == held]
        return sum(vals) / len(vals)

    res = {
        "steps": steps, "guidance_scale": guidance, "samples": len(prompts) * n, "seconds": round(seconds, 1),
        "mask_rule": f"bilinear up-sampling to 64x64, foreground where max_c(1 - rgb_c) > {MASK_DIFF}; GT mask alpha > 0.5",
        "trained": {k: agg(False, k) for k in ("shape_acc", "colour_acc", "mask_iou")},
        "held_out": {k: agg(True, k) for k in ("shape_acc", "colour_acc", "mask_iou")},
        "mask_iou_all": sum(v["mask_iou"] for v in per_pair.values()) / len(per_pair),
        "gt_rule_iou": sum(v["gt_rule_iou"] for v in per_pair.values()) / len(per_pair),
        "per_pair": per_pair,
    }
    if save_grid is not None:
        _save_grid(torch.cat(samples_all), len(prompts), n, save_grid)
    return res


def sweep_guidance(prior, clf, scales: Sequence[float], steps: int = 25, seed: int = 1) -> dict:
    """Pick the guidance scale on a small subset of *trained* pairs (one per colour, shapes cycling;
    4 of the evaluation views; `steps` DDIM steps): the best mean of shape acc, colour acc and mask IoU."""
    from .vocab import COLOUR_NAMES, SHAPE_NAMES

    pairs = [ObjectPrompt(c, SHAPE_NAMES[(i * 3) % len(SHAPE_NAMES)]) for i, c in enumerate(COLOUR_NAMES)]
    pairs = [p if not p.held_out else ObjectPrompt(p.colour, SHAPE_NAMES[(SHAPE_NAMES.index(p.shape) + 1) % 7]) for p in pairs]
    cams = object_eval_cameras()[torch.tensor([0, 2, 4, 6])]
    n = len(cams)
    texts = [canonical_text(p) for p in pairs for _ in range(n)]
    cam_b = type(cams).cat([cams] * len(pairs))
    gts = [render_gt([p] * n, cams) for p in pairs]
    gt_mask = torch.cat([g.alpha > 0.5 for g in gts])
    shape_true = torch.tensor([p.shape_id for p in pairs for _ in range(n)])
    colour_true = torch.tensor([p.colour_id for p in pairs for _ in range(n)])
    rows = []
    for gs in scales:
        samples = prior.sample(texts, cam_b, steps=steps, guidance_scale=gs, generator=torch.Generator().manual_seed(seed))
        out = clf.classify(samples)
        row = {"guidance_scale": gs, "shape_acc": _acc(out.shape_ids, shape_true), "colour_acc": _acc(out.colour_ids, colour_true),
               "mask_iou": float(_iou(sample_mask(samples), gt_mask).mean())}
        row["score"] = (row["shape_acc"] + row["colour_acc"] + row["mask_iou"]) / 3
        print("sweep", json.dumps(row), flush=True)
        rows.append(row)
    best = max(rows, key=lambda r: r["score"])
    return {"pairs": [canonical_text(p) for p in pairs], "views": n, "steps": steps, "rows": rows, "best": best["guidance_scale"]}


def view_cameras(azimuths: Sequence[float], size: int = 64):
    """Cameras at el 20, d 1.8 (the evaluation rig's) at the given azimuths."""
    from ..cameras import orbit_cameras

    return orbit_cameras([20.0] * len(azimuths), list(azimuths), 1.8, width=size, height=size)


def assign_views(masks: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """For sample masks [B, H, W, 1] and candidate ground-truth masks [B, V, H, W, 1] (per sample, its
    shape's masks at the V candidate azimuths), the index [B] of the candidate with the highest IoU."""
    B, V = gt_masks.shape[:2]
    ious = torch.stack([_iou(masks, gt_masks[:, v]) for v in range(V)], 1)  # [B, V]
    return ious.argmax(1)


@torch.no_grad()
def eval_view(prior, steps: int = 25, seeds: int = 4, guidance: Optional[float] = None, seed: int = 0,
              save_sheet: Optional[Path] = None) -> dict:
    """View accuracy of the prior (see the module docstring, 3.)."""
    prompts = [p for p in all_object_prompts(include_held_out=True) if p.shape in VIEW_SHAPES]
    nv = len(VIEW_AZIMUTHS)
    gt_masks = {s: render_gt(f"a gray {s}", view_cameras(VIEW_AZIMUTHS)).alpha > 0.5 for s in VIEW_SHAPES}  # [V, 64, 64, 1]
    g = torch.Generator().manual_seed(seed)
    az = [a for _ in range(seeds) for a in VIEW_AZIMUTHS]  # per pair: seeds x azimuths
    per_pair, t0 = {}, time.perf_counter()
    for p in prompts:
        samples = prior.sample(canonical_text(p), view_cameras(az, prior.resolution), steps=steps,
                               guidance_scale=guidance, generator=g)  # [seeds * V, R, R, 3]
        got = assign_views(sample_mask(samples), gt_masks[p.shape][None].expand(len(az), *gt_masks[p.shape].shape))
        want = torch.arange(nv).repeat(seeds)
        per_pair[canonical_text(p)] = {"held_out": p.held_out, "view_acc": _acc(got, want)}
    seconds = time.perf_counter() - t0
    vals = lambda held: [v["view_acc"] for v in per_pair.values() if held is None or v["held_out"] == held]  # noqa: E731
    res = {"shapes": list(VIEW_SHAPES), "azimuths": list(VIEW_AZIMUTHS), "samples": len(prompts) * len(az),
           "steps": steps, "guidance_scale": guidance if guidance is not None else prior.config.default_guidance_scale,
           "seconds": round(seconds, 1), "view_acc": sum(vals(None)) / len(vals(None)),
           "trained_view_acc": sum(vals(False)) / len(vals(False)), "held_out_view_acc": sum(vals(True)) / len(vals(True)),
           "per_pair": per_pair}
    if save_sheet is not None:
        cols = len(SHEET_AZIMUTHS)
        gts = [render_gt(f"a gray {s}", view_cameras(SHEET_AZIMUTHS, prior.resolution)).rgb for s in VIEW_SHAPES]
        rows = [prior.sample(canonical_text(p), view_cameras(SHEET_AZIMUTHS, prior.resolution), steps=steps,
                             guidance_scale=guidance, generator=torch.Generator().manual_seed(seed)) for p in prompts]
        _save_grid(torch.cat(gts + rows), len(gts) + len(rows), cols, save_sheet)
    return res


def _save_grid(samples: torch.Tensor, rows: int, cols: int, path: Path) -> None:
    """A PNG with one row per pair (vocab order) and one column per evaluation camera."""
    try:
        from PIL import Image
    except ImportError:  # optional
        return
    R = samples.shape[1]
    grid = samples.reshape(rows, cols, R, R, 3).permute(0, 2, 1, 3, 4).reshape(rows * R, cols * R, 3)
    Image.fromarray((grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(path)


def eval_estimator(est, num_objects: int = 256, num_rooms: int = 64, seed: int = 777,
                   timesteps: Sequence[int] = TIMESTEPS) -> dict:
    from .data import ShapeWorldDataset, generate
    from .estimator import estimator_errors, estimator_tensors

    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, num_objects, num_rooms, seed, include_held_out=True)
        ds = ShapeWorldDataset(tmp)
        data = estimator_tensors(ds, est.config.resolution)
        kinds = torch.from_numpy(ds.arrays["kind"].astype("int64"))
    g = torch.Generator().manual_seed(seed)
    x0 = data["images"].float() / 127.5 - 1.0
    depth, normal, mask = data["depth"].float(), data["normal"].float(), data["mask"]
    curve = []
    for t in timesteps:
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long)
        with torch.no_grad():
            out = est(est.noised(x0, tt, g) if t > 0 else x0, tt)
        row = {"t": int(t), "alpha_t": float(est.alphas_cumprod[t].sqrt())}
        for name, sel in (("objects", kinds == 0), ("rooms", kinds == 1), ("all", torch.ones_like(kinds, dtype=torch.bool))):
            o = type(out)(out.depth[sel], out.normal[sel])
            row[name] = estimator_errors(o, depth[sel], normal[sel], mask[sel])
        curve.append(row)
    return {"images": int(x0.shape[0]), "clean": curve[0], "curve": curve,
            "depth_metric": "least-squares scale/shift alignment per image on the fully covered pixels, then mean |d - d_gt| / d_gt (abs rel) and in metres",
            "normal_metric": "mean angle (degrees) between predicted and true camera-frame normals on the fully covered pixels"}


def _markdown(res: dict) -> str:
    L = ["# ShapeWorld models: measured quality", "", f"Last updated {res['date']} by `python -m steinsplat.shapeworld.evaluate` "
         f"(parts evaluated in that invocation: {', '.join(res.get('parts', []))}; {res['seconds']:.0f} s on this CPU).", ""]
    if "classifier" in res:
        c = res["classifier"]
        L += ["## Classifier on ground-truth renders", "",
              f"{c['images']} images (all 56 pairs; 8 evaluation views + random views each).", "",
              "| | shape acc | colour acc |", "|---|---|---|",
              f"| all pairs | {c['shape_acc']:.3f} | {c['colour_acc']:.3f} |",
              f"| held-out pairs | {c['held_out_shape_acc']:.3f} | {c['held_out_colour_acc']:.3f} |", "",
              f"Target >= 0.98 shape and colour: **{'met' if min(c['shape_acc'], c['colour_acc']) >= 0.98 else 'NOT met'}**.", ""]
    if "prior" in res:
        p = res["prior"]
        ok_t = p["trained"]["shape_acc"] >= 0.90 and p["trained"]["colour_acc"] >= 0.95
        ok_h = p["held_out"]["shape_acc"] >= 0.75 and p["held_out"]["colour_acc"] >= 0.75
        ok_m = p["mask_iou_all"] >= 0.8
        if "guidance_sweep" in res:
            sw = res["guidance_sweep"]
            L += ["## Guidance scale", "", f"Chosen on {len(sw['pairs'])} trained pairs x {sw['views']} views, "
                  f"DDIM {sw['steps']} steps (mean of shape acc, colour acc, mask IoU):", "",
                  "| guidance | shape acc | colour acc | mask IoU |", "|---|---|---|---|"]
            L += [f"| {r['guidance_scale']} | {r['shape_acc']:.3f} | {r['colour_acc']:.3f} | {r['mask_iou']:.3f} |" for r in sw["rows"]]
            L += ["", f"Best: {sw['best']}.", ""]
        L += ["## Prior samples at the 8 evaluation cameras", "",
              f"{p['samples']} samples, DDIM {p['steps']} steps, guidance {p['guidance_scale']}, {p['seconds']:.0f} s. "
              f"Mask rule: {p['mask_rule']} (the rule on the ground-truth RGB gives IoU {p['gt_rule_iou']:.3f}).", "",
              "| pairs | shape acc | colour acc | mask IoU |", "|---|---|---|---|",
              f"| trained (50) | {p['trained']['shape_acc']:.3f} | {p['trained']['colour_acc']:.3f} | {p['trained']['mask_iou']:.3f} |",
              f"| held-out (6) | {p['held_out']['shape_acc']:.3f} | {p['held_out']['colour_acc']:.3f} | {p['held_out']['mask_iou']:.3f} |",
              f"| all (56) | | | {p['mask_iou_all']:.3f} |", "",
              f"Targets: trained >= 0.90 shape and >= 0.95 colour: **{'met' if ok_t else 'NOT met'}**; "
              f"held-out >= 0.75: **{'met' if ok_h else 'NOT met'}**; mask IoU >= 0.8: **{'met' if ok_m else 'NOT met'}**.", "",
              "Per held-out pair:", "", "| pair | shape acc | colour acc | mask IoU |", "|---|---|---|---|"]
        for k, v in p["per_pair"].items():
            if v["held_out"]:
                L.append(f"| {k} | {v['shape_acc']:.2f} | {v['colour_acc']:.2f} | {v['mask_iou']:.2f} |")
        L.append("")
    if "view" in res:
        v = res["view"]
        L += ["## View test of the prior", "",
              f"{v['samples']} samples of {', '.join(v['shapes'])} (all colours, held-out pairs included) at az "
              f"{' and '.join(str(a) for a in v['azimuths'])} (el 20, d 1.8), DDIM {v['steps']} steps, guidance "
              f"{v['guidance_scale']}; each assigned to the ground-truth view its mask matches better "
              f"({v['seconds']:.0f} s). Chance is 0.5.", "",
              "| pairs | view accuracy |", "|---|---|",
              f"| all | {v['view_acc']:.3f} |", f"| trained | {v['trained_view_acc']:.3f} |",
              f"| held-out | {v['held_out_view_acc']:.3f} |", "",
              f"Target >= 0.95: **{'met' if v['view_acc'] >= 0.95 else 'NOT met'}**. Sample sheet: `view_samples.png` "
              "(top rows: ground truth of each shape; then one row per pair; columns az 0, 15, ..., 90).", ""]
    if "estimator" in res:
        e = res["estimator"]
        cl = e["clean"]
        L += ["## Estimator", "", f"{e['images']} fresh ground-truth renders (objects and rooms). {e['depth_metric']}; "
              f"{e['normal_metric']}.", "",
              "(`all` averages over pixels, so the full-frame rooms weigh more than their share of images.)", "",
              "| t | alpha_t | objects depth abs rel | objects normal deg | rooms depth abs rel | rooms normal deg | all normal deg |",
              "|---|---|---|---|---|---|---|"]
        for r in e["curve"]:
            L.append(f"| {r['t']} | {r['alpha_t']:.3f} | {r['objects']['depth_abs_rel']:.3f} | {r['objects']['normal_deg']:.1f} | "
                     f"{r['rooms']['depth_abs_rel']:.3f} | {r['rooms']['normal_deg']:.1f} | {r['all']['normal_deg']:.1f} |")
        L += ["", f"Target <= 10 degrees mean normal error on clean images: **{'met' if cl['all']['normal_deg'] <= 10 else 'NOT met'}** "
              f"({cl['all']['normal_deg']:.1f} deg; objects {cl['objects']['normal_deg']:.1f}, rooms {cl['rooms']['normal_deg']:.1f}).", ""]
    return "\n".join(L)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m steinsplat.shapeworld.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--assets", type=Path, default=None, help="folder with prior/, classifier/, estimator/ (default: steinsplat/assets/shapeworld)")
    ap.add_argument("--out", type=Path, default=None, help="where to write evaluation.json/.md (default: --assets)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps for the prior samples")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the prior's own default)")
    ap.add_argument("--sweep", type=str, default=None,
                    help="comma-separated guidance scales to try on a small trained subset first; the best is used (e.g. 2,3,5,7.5)")
    ap.add_argument("--random-views", type=int, default=4, help="extra random views per pair for the classifier test")
    ap.add_argument("--only", choices=("classifier", "prior", "view", "estimator"), action="append", help="evaluate only these (repeatable)")
    ap.add_argument("--view-seeds", type=int, default=4, help="view test: samples per pair and azimuth")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from .classifier import ShapeWorldClassifier
    from .estimator import ShapeWorldEstimator
    from .prior import ShapeWorldPrior, default_assets_dir

    assets = args.assets or default_assets_dir()
    out = args.out or assets
    only = set(args.only or ("classifier", "prior", "view", "estimator"))
    t0 = time.perf_counter()
    json_path = out / "evaluation.json"
    res = json.loads(json_path.read_text()) if json_path.exists() else {}  # keep figures of parts not re-run
    clf = ShapeWorldClassifier.from_pretrained(assets / "classifier")
    if "classifier" in only:
        res["classifier"] = eval_classifier(clf, args.random_views)
        print("classifier", json.dumps(res["classifier"]), flush=True)
    if "prior" in only:
        prior = ShapeWorldPrior.from_pretrained(assets / "prior")
        g = args.guidance if args.guidance is not None else prior.config.default_guidance_scale
        if args.sweep:
            res["guidance_sweep"] = sweep_guidance(prior, clf, [float(v) for v in args.sweep.split(",")])
            g = res["guidance_sweep"]["best"]
        res["prior"] = eval_prior(prior, clf, args.steps, g, save_grid=out / "prior_samples.png")
        print("prior", json.dumps({k: v for k, v in res["prior"].items() if k != "per_pair"}), flush=True)
    if "view" in only:
        prior = ShapeWorldPrior.from_pretrained(assets / "prior")
        res["view"] = eval_view(prior, seeds=args.view_seeds, guidance=args.guidance, save_sheet=out / "view_samples.png")
        print("view", json.dumps({k: v for k, v in res["view"].items() if k != "per_pair"}), flush=True)
    if "estimator" in only:
        res["estimator"] = eval_estimator(ShapeWorldEstimator.from_pretrained(assets / "estimator"))
        print("estimator clean", json.dumps(res["estimator"]["clean"]), flush=True)
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["seconds"] = time.perf_counter() - t0
    res["parts"] = sorted(only)
    out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    (out / "evaluation.md").write_text(_markdown(res) + "\n")
    print(f"wrote {json_path} and {out / 'evaluation.md'}")


if __name__ == "__main__":
    main()
