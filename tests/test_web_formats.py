"""Our PLY and .spz in the web's own tools: Spark 2.x (three.js) in headless Chromium draws them like our
rasteriser does, and PlayCanvas's splat-transform reads them with our values. Our glTF (KHR_gaussian_splatting)
in Babylon.js 9, and files written with --up y in viewers that keep their default up vector (+Y).

The npm packages are pinned in .web/package.json (+ package-lock.json) and installed into .web/node_modules
by scripts/web-deps.sh (`make setup`, so `make test` and CI install them); Chromium is Debian's, as in
tests/test_viewer.py. Where either is missing these tests skip and say how to install it.
"""

from __future__ import annotations

import base64
import csv
import http.server
import io
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from steinsplat.cameras import orbit_cameras
from steinsplat.export import export_gaussians, load_gaussians, read_ply, write_ply, write_splat, write_spz
from steinsplat.export.axes import up_rotation
from steinsplat.gaussians import Gaussians

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / ".web"
NODE_MODULES = WEB / "node_modules"
PAGE = Path(__file__).resolve().parent / "web"
INSTALL_HINT = "run `bash scripts/web-deps.sh` (make setup does) to install Spark, three.js, Babylon.js and splat-transform"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
SIZE = 256  # image width and height
RED = (0.85, 0.12, 0.10)  # ShapeWorld's red (shapeworld/vocab.py)


def _need(path: Path, what: str) -> None:
    if not path.exists():
        pytest.skip(f"{what} is not installed ({path} is missing): {INSTALL_HINT}")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("Chromium is missing: run `bash scripts/system-deps.sh` (make setup does) to install Debian's chromium")


# ---------------------------------------------------------------------------- the red cube, as PLY and .spz
@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> dict[str, Path]:
    """ShapeWorld's red cube as a reference cloud (Gaussians filling the true solid), saved in our three formats."""
    from steinsplat.shapeworld.shape_metrics import gaussians_from_solid

    g = gaussians_from_solid("cube", spacing=0.03, colour=RED)
    folder = tmp_path_factory.mktemp("cube")
    write_ply(folder / "cube.ply", g)
    write_spz(folder / "cube.spz", g)
    write_splat(folder / "cube.splat", g)
    files = {fmt: folder / f"cube.{fmt}" for fmt in ("ply", "spz", "splat")}
    # and a generated red cube (a short run of the demo's command: many faint splats, as generation makes them)
    from steinsplat.cli import main

    run = folder / "run" / "generated.ply"
    assert main(["a red cube", "--out", str(run), "--steps", "80", "--resolution", "32", "--views", "1",
                 "--preview-every", "0", "--checkpoint-every", "0", "--quiet"]) == 0
    generated = read_ply(run)
    write_ply(folder / "generated.ply", generated)
    write_spz(folder / "generated.spz", generated)
    files.update({"generated.ply": folder / "generated.ply", "generated.spz": folder / "generated.spz"})
    return files


def _load(path: Path) -> Gaussians:
    return load_gaussians(path)


# ---------------------------------------------------------------------------- Spark in Chromium
class _Handler(http.server.SimpleHTTPRequestHandler):
    """/node_modules/... from .web/node_modules, /data/... from the test's folder, the rest from tests/web."""

    data_dir: Path = Path(".")

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, root in (("/node_modules/", NODE_MODULES), ("/data/", self.data_dir)):
            if path.startswith(prefix):
                return str(root / path[len(prefix):])
        return str(PAGE / path.lstrip("/"))

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture(scope="module")
def server(cube):
    _need(NODE_MODULES / "@sparkjsdev" / "spark" / "dist" / "spark.module.js", "Spark (@sparkjsdev/spark)")
    _need(NODE_MODULES / "three" / "build" / "three.module.js", "three.js")
    handler = type("Handler", (_Handler,), {"data_dir": cube["ply"].parent})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": SIZE, "height": SIZE})
        yield ctx.new_page()
        ctx.close()


def _png(data_url: str) -> np.ndarray:
    from PIL import Image

    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.float64) / 255.0  # [H, W, 3]


def spark_render(page, server: str, name: str, cam) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied rgb [H, W, 3], alpha [H, W]) of /data/<name> drawn by Spark from `cam` (one camera)."""
    c2w = ",".join(f"{v:.9g}" for v in cam.camtoworlds[0].reshape(-1).tolist())
    fovy = float(2 * np.degrees(np.arctan(0.5 * cam.height / float(cam.Ks[0, 1, 1]))))
    page.goto(f"{server}/spark.html?file=/data/{name}&w={cam.width}&h={cam.height}&fovy={fovy:.9g}&c2w={c2w}")
    page.wait_for_function("window.result !== undefined || window.failure !== undefined", timeout=45_000)
    failure = page.evaluate("window.failure")
    assert failure is None, f"Spark failed on {name}: {failure}"
    res = page.evaluate("window.result")
    black, white = _png(res["black"]), _png(res["white"])
    alpha = np.clip(1.0 - (white - black).mean(axis=-1), 0.0, 1.0)  # over black: a c; over white: a c + 1 - a
    return black, alpha


def eye_target(cam, up: str) -> str:
    """The query `eye=...&target=...` of one orbit camera in the coordinates of a file written with `up`: a viewer
    that looks from eye at target with its default up vector (+Y) sees what our camera (up +Z) sees."""
    c2w = cam.camtoworlds[0].double().numpy()
    eye = c2w[:3, 3]
    target = eye + c2w[:3, 2] * np.linalg.norm(eye)  # OpenCV: z forward; orbit cameras look at the origin
    R = up_rotation(up)
    fmt = lambda v: ",".join(f"{x:.9g}" for x in R @ v)  # noqa: E731
    return f"eye={fmt(eye)}&target={fmt(target)}"


def _fovy(cam) -> float:
    return float(2 * np.degrees(np.arctan(0.5 * cam.height / float(cam.Ks[0, 1, 1]))))


def _frames(page, url: str, who: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    page.goto(url)
    page.wait_for_function("window.result !== undefined || window.failure !== undefined", timeout=90_000)
    failure = page.evaluate("window.failure")
    assert failure is None, f"{who} failed on {name}: {failure}"
    res = page.evaluate("window.result")
    black, white = _png(res["black"]), _png(res["white"])
    alpha = np.clip(1.0 - (white - black).mean(axis=-1), 0.0, 1.0)  # over black: a c; over white: a c + 1 - a
    return black, alpha


def babylon_render(page, server: str, name: str, cam) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied rgb [H, W, 3], alpha [H, W]) of the glTF /data/<name> drawn by Babylon.js from `cam`, its
    camera keeping Babylon's default up (+Y: glTF's up, our +Z)."""
    _need(NODE_MODULES / "babylonjs" / "babylon.js", "Babylon.js (babylonjs)")
    _need(NODE_MODULES / "babylonjs-loaders" / "babylonjs.loaders.min.js", "Babylon.js's loaders (babylonjs-loaders)")
    url = f"{server}/babylon.html?file=/data/{name}&w={cam.width}&h={cam.height}&fovy={_fovy(cam):.9g}&{eye_target(cam, 'y')}"
    return _frames(page, url, "Babylon.js", name)


def our_render(path: Path, cam) -> tuple[np.ndarray, np.ndarray]:
    from steinsplat.render import render

    with torch.no_grad():
        out = render(_load(path), cam)  # transparent background: premultiplied rgb
    return out.rgb[0].clamp(0, 1).double().numpy(), out.alpha[0, ..., 0].double().numpy()


@pytest.mark.parametrize("fmt", ["ply", "spz", "splat", "generated.ply", "generated.spz"])
def test_spark_draws_our_file_like_our_rasteriser(page, server, cube, fmt: str) -> None:
    """Same file, same camera: Spark's silhouette overlaps ours with IoU >= 0.95 and the colours agree."""
    cam = orbit_cameras([20.0], [30.0], [1.8], fovy=40.0, width=SIZE, height=SIZE)
    rgb_s, alpha_s = spark_render(page, server, cube[fmt].name, cam)
    rgb_o, alpha_o = our_render(cube[fmt], cam)
    mask_s, mask_o = alpha_s > 0.5, alpha_o > 0.5
    assert mask_o.mean() > 0.1, "the cube should fill a good part of the view"
    iou = (mask_s & mask_o).sum() / (mask_s | mask_o).sum()
    both = mask_s & mask_o
    colour_s = (rgb_s[both] / alpha_s[both, None]).mean(0)
    colour_o = (rgb_o[both] / alpha_o[both, None]).mean(0)
    print(f"{fmt}: silhouette IoU {iou:.4f}; mean colour Spark {np.round(colour_s, 3)} ours {np.round(colour_o, 3)}")
    assert iou >= 0.95, iou
    assert np.abs(colour_s - colour_o).max() < 0.05, (colour_s, colour_o)


def test_spark_view_is_not_symmetric_by_accident(page, server, cube) -> None:
    """The camera conversion is checked, not assumed: a view from the other side of a lopsided cloud differs."""
    cam = orbit_cameras([20.0], [30.0], [1.8], fovy=40.0, width=SIZE, height=SIZE)
    g = _load(cube["ply"])
    keep = (g.means[:, 0] > 0) | (g.means[:, 2] > 0.1)  # a cube with one lower quarter cut away: no symmetry
    lopsided = Gaussians(*(g.splats[k].detach()[keep] for k in ("means", "scales", "quats", "opacities", "sh0")))
    path = cube["ply"].parent / "lopsided.ply"
    write_ply(path, lopsided)
    _, alpha_s = spark_render(page, server, path.name, cam)
    _, alpha_o = our_render(path, cam)
    mask_s, mask_o = alpha_s > 0.5, alpha_o > 0.5
    iou = (mask_s & mask_o).sum() / (mask_s | mask_o).sum()
    flipped = mask_s[::-1, ::-1]  # what a 180-degree error in the axis flip would give
    iou_flipped = (flipped & mask_o).sum() / (flipped | mask_o).sum()
    assert iou >= 0.95 and iou_flipped < 0.9, (iou, iou_flipped)


def test_spark_refuses_spz_version_4(page, server, cube) -> None:
    """Why we write version 3: the same splats as a version-4 .spz (zstd, splat-transform 3.7+'s default) are
    refused by Spark 2.2. If a Spark update reads them, this test says so."""
    pytest.importorskip("zstandard", reason="gsply writes .spz version 4 with zstandard (pip install zstandard)")
    import gsply

    g = _load(cube["spz"])
    s = {k: v.detach().numpy() for k, v in g.splats.items()}
    data = gsply.GSData.from_arrays(s["means"], s["scales"], s["quats"], s["opacities"], s["sh0"][:, 0], None,
                                    format="ply")
    gsply.write_spz(cube["spz"].parent / "v4.spz", data, version=4)
    assert (cube["spz"].parent / "v4.spz").read_bytes()[:5] == b"NGSP\x04"
    cam = orbit_cameras([20.0], [30.0], [1.8], fovy=40.0, width=SIZE, height=SIZE)
    with pytest.raises(AssertionError, match="Invalid gzip header"):
        spark_render(page, server, "v4.spz", cam)


# ---------------------------------------------------------------------------- splat-transform
def splat_transform(*args: str) -> subprocess.CompletedProcess:
    tool = NODE_MODULES / ".bin" / "splat-transform"
    _need(tool, "splat-transform (@playcanvas/splat-transform)")
    if shutil.which("node") is None:
        pytest.skip(f"Node.js is missing: {INSTALL_HINT}")
    return subprocess.run([str(tool), "-q", "-w", *args], capture_output=True, text=True, timeout=120)


def _csv_columns(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {name: np.array([float(r[j]) for r in rows[1:]]) for j, name in enumerate(rows[0])}


def _ply_columns(g: Gaussians) -> dict[str, np.ndarray]:
    """Our Gaussians under the 3DGS PLY's column names (f_rest channel-major), float64."""
    s = {k: v.detach().double().numpy() for k, v in g.splats.items()}
    cols = {a: s["means"][:, i] for i, a in enumerate("xyz")}
    cols |= {f"scale_{i}": s["scales"][:, i] for i in range(3)}
    cols |= {f"rot_{i}": s["quats"][:, i] for i in range(4)}
    cols |= {f"f_dc_{i}": s["sh0"][:, 0, i] for i in range(3)}
    k = s["shN"].shape[1]
    cols |= {f"f_rest_{c * k + j}": s["shN"][:, j, c] for c in range(3) for j in range(k)}
    cols["opacity"] = s["opacities"]
    return cols


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> dict[str, Path]:
    """Gaussians that use every field: random rotations, anisotropic scales, opacities, SH degree 3 (all inside
    the .spz ranges), as PLY, .spz and .splat (which keeps the DC colour only)."""
    gen = torch.Generator().manual_seed(7)
    n = 400
    g = Gaussians(torch.rand(n, 3, generator=gen) - 0.5, torch.rand(n, 3, generator=gen) * 5 - 7,
                  torch.randn(n, 4, generator=gen), torch.randn(n, generator=gen) * 2,
                  torch.rand(n, 1, 3, generator=gen) * 5 - 2.5, torch.rand(n, 15, 3, generator=gen) * 1.8 - 0.9)
    folder = tmp_path_factory.mktemp("varied")
    write_ply(folder / "g.ply", g)
    write_spz(folder / "g.spz", g)
    write_splat(folder / "g.splat", g)
    return {fmt: folder / f"g.{fmt}" for fmt in ("ply", "spz", "splat")}


@pytest.mark.parametrize("fmt", ["ply", "spz", "splat"])
def test_splat_transform_reads_our_values(varied, tmp_path: Path, fmt: str) -> None:
    """splat-transform converts our file to CSV without complaint, keeps every Gaussian in order, and every
    column equals what our reader gets from the same file: PLY exactly (float32), .spz and .splat to float32
    rounding of the same dequantisation (rotations up to sign: .spz stores three components)."""
    out = tmp_path / f"{fmt}.csv"
    res = splat_transform(str(varied[fmt]), str(out))
    assert res.returncode == 0, res.stderr + res.stdout
    theirs = _csv_columns(out)
    ours = _ply_columns(_load(varied[fmt]))
    assert len(theirs["x"]) == len(ours["x"]) == 400
    missing = sorted(set(ours) - set(theirs))
    assert not missing, f"splat-transform's CSV lacks {missing}"
    tol = 0.0 if fmt == "ply" else 2e-6
    for name in ours:
        if name.startswith("rot_"):
            continue
        a, b = theirs[name], ours[name]
        if name == "opacity" and fmt != "ply":  # 8 bits of alpha: compare alphas (the logit is steep near 0 and 1)
            a, b = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
        err = float(np.abs(a - b).max())
        assert err <= tol * max(1.0, float(np.abs(b).max())), f"{name}: splat-transform differs from us by {err:.3g}"
    q_t = np.stack([theirs[f"rot_{i}"] for i in range(4)], 1)
    q_o = np.stack([ours[f"rot_{i}"] for i in range(4)], 1)
    q_t, q_o = (q / np.linalg.norm(q, axis=1, keepdims=True) for q in (q_t, q_o))
    # .splat: splat-transform centres the rotation bytes half a step (1/256) off from antimatter15's q * 128 + 128
    # (ours): within the format's precision, |cos| of the angle between the two >= 1 - 1e-4 (about 0.8 degrees)
    bound = {"ply": 1e-7, "spz": 1e-5, "splat": 1e-4}[fmt]
    assert np.abs(np.abs((q_t * q_o).sum(1)) - 1).max() <= bound


# ---------------------------------------------------------------------------- glTF in Babylon.js, --up y in Spark
def _lopsided(g: Gaussians) -> Gaussians:
    """`g` with one lower quarter cut away: no view of it looks the same upside down or mirrored."""
    keep = (g.means[:, 0] > 0) | (g.means[:, 2] > 0.1)
    return Gaussians(*(g.splats[k].detach()[keep] for k in ("means", "scales", "quats", "opacities", "sh0", "shN")))


@pytest.fixture(scope="module")
def upright(cube) -> dict[str, Path]:
    """Lopsided cubes: the reference cube as .splats.glb, and the generated cube as our +Z-up PLY and as a PLY
    written --up y.

    Babylon.js cuts each splat off at 2.83 sigma (exp(-|p|^2) discarded below exp(-4)) where gsplat and Spark go
    to 3 sigma, so on the generated cube's many faint splats (median opacity ~0.14) its silhouette comes out a
    little thinner than ours (IoU 0.94 at alpha 0.5, every pixel of it inside ours); the reference cube's
    silhouette is solid, and there the two must agree."""
    g = _lopsided(read_ply(cube["generated.ply"]))
    folder = cube["ply"].parent
    files = {"z": folder / "lopsided-z.ply", "gltf": folder / "lopsided.splats.glb", "y": folder / "lopsided-y.ply",
             "gltf-ref": folder / "lopsided-ref.ply"}
    write_ply(files["z"], g)
    export_gaussians(files["y"], g, up="y")
    ref = _lopsided(read_ply(cube["ply"]))
    write_ply(files["gltf-ref"], ref)
    export_gaussians(files["gltf"], ref)
    return files


def _compare(who: str, rgb_t, alpha_t, rgb_o, alpha_o) -> None:
    """Their silhouette overlaps ours with IoU >= 0.95 (and not when turned upside down), the colours agree."""
    mask_t, mask_o = alpha_t > 0.5, alpha_o > 0.5
    assert mask_o.mean() > 0.1, "the cube should fill a good part of the view"
    iou = (mask_t & mask_o).sum() / (mask_t | mask_o).sum()
    flipped = mask_t[::-1, ::-1]  # what a wrong up axis (the file upside down) would give
    iou_flipped = (flipped & mask_o).sum() / (flipped | mask_o).sum()
    both = mask_t & mask_o
    colour_t = (rgb_t[both] / alpha_t[both, None]).mean(0)
    colour_o = (rgb_o[both] / alpha_o[both, None]).mean(0)
    print(f"{who}: silhouette IoU {iou:.4f} (upside down {iou_flipped:.4f}); mean colour theirs "
          f"{np.round(colour_t, 3)} ours {np.round(colour_o, 3)}")
    assert iou >= 0.95 and iou_flipped < 0.9, (iou, iou_flipped)
    assert np.abs(colour_t - colour_o).max() < 0.05, (colour_t, colour_o)


def test_babylon_draws_our_gltf_splats_like_our_rasteriser(page, server, upright) -> None:
    """Babylon.js 9 reads our KHR_gaussian_splatting file and, from the same camera (Babylon's default up, +Y),
    draws it like our rasteriser draws the same file read back by our reader."""
    cam = orbit_cameras([20.0], [30.0], [1.8], fovy=40.0, width=SIZE, height=SIZE)
    rgb_b, alpha_b = babylon_render(page, server, upright["gltf"].name, cam)
    rgb_o, alpha_o = our_render(upright["gltf"], cam)
    _compare("Babylon.js, .splats.glb", rgb_b, alpha_b, rgb_o, alpha_o)
    rgb_r, alpha_r = our_render(upright["gltf-ref"], cam)  # and our reader returned what was written
    assert np.abs(alpha_r - alpha_o).max() < 1e-4 and np.abs(rgb_r - rgb_o).max() < 1e-4


def test_spark_draws_our_y_up_ply_upright_with_its_default_up(page, server, upright) -> None:
    """A PLY written with --up y, in Spark with three.js's default camera up (+Y), looks as our +Z-up original
    does in our rasteriser from the same camera."""
    cam = orbit_cameras([20.0], [30.0], [1.8], fovy=40.0, width=SIZE, height=SIZE)
    url = (f"{server}/spark.html?file=/data/{upright['y'].name}&w={cam.width}&h={cam.height}&fovy={_fovy(cam):.9g}"
           f"&{eye_target(cam, 'y')}")
    rgb_s, alpha_s = _frames(page, url, "Spark", upright["y"].name)
    rgb_o, alpha_o = our_render(upright["z"], cam)
    _compare("Spark, PLY --up y", rgb_s, alpha_s, rgb_o, alpha_o)
