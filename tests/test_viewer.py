"""The browser viewer (viser), checked in a real headless Chromium: `steinsplat view`, the offline
bundle of `export --html` on a static file server, the live viewer's pause / snapshot buttons clicked
on the page, and the errors a user can make.

Chromium is Debian's `chromium` (installed by scripts/system-deps.sh, i.e. `make setup` / `.ci/run`),
driven by the `playwright` package with `executable_path` (Playwright's own browsers are never
downloaded). These tests fail rather than skip when Chromium is missing: the set-up installs it.
"""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from steinsplat.cli import expand_viewer_flag, main
from steinsplat.export import load_gaussians, write_ply
from steinsplat.gaussians import Gaussians, quat_to_rotmat

VIEWPORT = {"width": 1200, "height": 800}
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    # WebGL on a machine without a GPU: SwiftShader (Chromium 156 also falls back to it by itself).
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
RED = (1.0, 0.0, 0.0)


# ---------------------------------------------------------------------------- helpers
def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is missing: run `bash scripts/system-deps.sh` (make setup does) to install Debian's chromium")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
        yield ctx
        ctx.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def coloured_blob(n: int = 800, rgb=RED, radius: float = 0.25, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n, 3, generator=gen) * 2 - 1) * radius  # [n, 3] in a cube
    return Gaussians.from_points(pts, colors=torch.tensor([rgb]).repeat(n, 1), opacity=0.95, scale=0.04)


def colour_shares(png: bytes, rgb=RED) -> tuple[float, float]:
    """Shares of pixels close to `rgb` (tolerance 90: edges composite onto the white background) in the
    centre third of the image and in its left and bottom tenths (away from viser's GUI panel on the
    right): an object in view covers much of the centre and little of the border."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)  # [H, W, 3]
    h, w, _ = img.shape
    close = (np.abs(img - np.array(rgb) * 255) <= 90).all(-1)  # [H, W]
    centre = close[h // 3: 2 * h // 3, w // 3: 2 * w // 3]  # [H/3, W/3]
    border = np.concatenate([close[:, : w // 10].ravel(), close[-h // 10:, :].ravel()])
    return float(centre.mean()), float(border.mean())


def screenshot_until(page, url: str, rgb=RED, share: float = 0.3, timeout: float = 40.0) -> tuple[float, float, bytes]:
    """Open `url`, then screenshot until `rgb` covers `share` of the centre (or time runs out);
    returns the last (centre share, border share, png)."""
    page.goto(url)
    page.wait_for_selector("canvas", timeout=timeout * 1000)
    end = time.perf_counter() + timeout
    while True:
        png = page.screenshot()
        centre, border = colour_shares(png, rgb)
        if centre >= share or time.perf_counter() > end:
            return centre, border, png
        page.wait_for_timeout(500)


def assert_object_drawn(shot: tuple[float, float, bytes], folder: Path, name: str) -> None:
    centre, border, png = shot
    where = save_failure(png, folder, name) if not (centre >= 0.3 and border < 0.05) else ""
    assert centre >= 0.3, f"{name}: the object's colour covers only {centre:.1%} of the centre ({where})"
    assert border < 0.05, f"{name}: the object's colour covers {border:.1%} of the border: not framed ({where})"


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until `proc` serves `url` (an HTTP request: a bare TCP probe makes websockets log a handshake error)."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert proc.poll() is None, proc.communicate()
            assert time.perf_counter() < deadline, f"nothing served at {url} after {timeout} s"
            time.sleep(0.2)


def input_values(page) -> list[str]:
    return page.evaluate("() => [...document.querySelectorAll('input')].map(i => i.value)")


def save_failure(png: bytes, folder: Path, name: str) -> str:
    """Keep the screenshot of a failing check for a human to look at."""
    path = folder / f"{name}.png"
    path.write_bytes(png)
    return str(path)


# ---------------------------------------------------------------------------- no browser
def test_splat_arrays_activate_the_parameters():
    from steinsplat.viewer import bounds, framing_camera, splat_arrays

    g = coloured_blob(50, rgb=(0.2, 0.6, 1.0))
    with torch.no_grad():
        g.splats["quats"][:] = torch.tensor([2.0, 0.4, -0.2, 0.6])  # not normalised: the viewer normalises
        g.splats["scales"][:, 0] = np.log(0.1)
        g.splats["means"][3] = float("nan")  # dropped, like the PLY writer does
    a = splat_arrays(g)
    assert len(a) == 49 and a.centers.dtype == np.float32
    assert a.covariances.shape == (49, 3, 3) and a.rgbs.shape == (49, 3) and a.opacities.shape == (49, 1)
    r = quat_to_rotmat(torch.nn.functional.normalize(torch.tensor([2.0, 0.4, -0.2, 0.6]), dim=0)).numpy()  # [3, 3]
    expected = r @ np.diag([0.1**2, 0.04**2, 0.04**2]) @ r.T
    np.testing.assert_allclose(a.covariances[0], expected, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(a.rgbs[0], [0.2, 0.6, 1.0], atol=1e-5)
    np.testing.assert_allclose(a.opacities, 0.95, atol=1e-5)
    b = bounds(a)
    assert all(lo < hi for lo, hi in zip(b.lo, b.hi)) and max(b.hi) <= 0.25
    cam = framing_camera(a)
    pos, at = np.array(cam.position), np.array(cam.look_at)
    assert np.abs(at).max() < 0.05 and 0.4 < np.linalg.norm(pos - at) < 2.0 and pos[2] > at[2]  # above, on the object


def test_viewer_flag_and_loopback_rules():
    assert expand_viewer_flag(["a red cube", "--viewer"]) == ["a red cube", "--viewer", "8080"]
    assert expand_viewer_flag(["--viewer", "--steps", "3"]) == ["--viewer", "8080", "--steps", "3"]
    assert expand_viewer_flag(["--viewer", "9000"]) == ["--viewer", "9000"]
    from steinsplat.viewer.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_cost_check_runs():
    from steinsplat.viewer.cost import hook_cpu_ms_per_step

    ms = hook_cpu_ms_per_step(300, steps=30, push_every=5, step_seconds=0.0)
    assert 0.0 < ms < 50.0  # measured ~0.4 ms with 1,000 Gaussians


def test_bad_input_gives_one_clear_error(tmp_path, capsys, monkeypatch):
    ply = tmp_path / "blob.ply"
    write_ply(ply, coloured_blob(20))
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    cases = [
        (["view", str(tmp_path / "missing.ply")], "no such file"),
        (["view", str(ply), "--port", "70000"], "0..65535"),
        (["view", str(ply), "--port", "-1"], "0..65535"),
        (["view", str(ply), "--host", "no-such-host.invalid"], "not an address"),
        (["export", str(ply)], "--html"),
        (["export", str(ply), "--html", str(not_a_folder)], "is a file"),
        (["export", str(ply), "--to", str(tmp_path / "x.viser"), "--sh-degree", "3"], ".ply output only"),
        (["a red cube", "--viewer", "99999", "--out", str(tmp_path / "c.ply")], "--viewer 99999"),
        (["batch", str(tmp_path / "p.txt"), "--viewer"], "single prompt"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert needle in err and "Traceback" not in err, (argv, err)
    # viser missing: the install hint, from `view`, `export --html` and `--viewer` alike
    monkeypatch.setitem(sys.modules, "viser", None)
    for argv in (["view", str(ply)], ["export", str(ply), "--html", str(tmp_path / "site")],
                 ["a red cube", "--viewer", "--out", str(tmp_path / "c.ply")]):
        assert main(argv) == 2, argv
        assert "pip install 'steinsplat[viewer]'" in " ".join(capsys.readouterr().err.split()), argv


def test_non_loopback_host_warns():
    from steinsplat.viewer.server import ViewerConfig, start_server, stop_server

    warnings: list[str] = []
    server = start_server(ViewerConfig(host="0.0.0.0", port=0), warn=warnings.append)
    stop_server(server)
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "127.0.0.1" in warnings[0]
    server = start_server(ViewerConfig(host="127.0.0.1", port=0), warn=warnings.append)
    stop_server(server)
    assert len(warnings) == 1


# ---------------------------------------------------------------------------- in the browser
def test_view_command_draws_the_splats_and_stops_on_ctrl_c_or_sigterm(tmp_path, browser):
    ply = tmp_path / "red.ply"
    write_ply(ply, coloured_blob())
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "steinsplat.cli", "view", str(ply), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, proc)
        page = browser.new_page()
        assert_object_drawn(screenshot_until(page, url), tmp_path, "view")
        values = input_values(page)
        assert "800" in values, values  # count readout
        assert any(v.startswith("-0.2") for v in values), values  # bounds readout
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{port}" in err and "viewer stopped" in err and "Traceback" not in err, err
    # SIGTERM (kill, service managers) stops it the same way
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "steinsplat.cli", "view", str(ply), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_http(f"http://127.0.0.1:{port}/", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "viewer stopped" in err and "Traceback" not in err, err


def test_view_command_shows_an_spz(tmp_path, browser):
    """`steinsplat view x.spz`: the .spz is read back (gsply) and drawn like the PLY."""
    from steinsplat.export import write_spz

    spz = tmp_path / "red.spz"
    write_spz(spz, coloured_blob(seed=2))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "steinsplat.cli", "view", str(spz), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, proc)
        page = browser.new_page()
        assert_object_drawn(screenshot_until(page, url), tmp_path, "view-spz")
        assert "800" in input_values(page)  # count readout
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "red.spz" in err and "(800 splats)" in err and "Traceback" not in err, err


def test_offline_bundle_on_a_static_server(tmp_path, browser):
    ply = tmp_path / "red.ply"
    write_ply(ply, coloured_blob(seed=1))
    site = tmp_path / "site"
    assert main(["export", str(ply), "--html", str(site), "--to", str(tmp_path / "red.viser")]) == 0
    assert {p.name for p in site.iterdir()} == {"index.html", "scene.viser", "client.html"}
    assert (tmp_path / "red.viser").stat().st_size > 1000 and (site / "scene.viser").stat().st_size > 1000
    handler_cls = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    handler = functools.partial(handler_cls, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/"
        page = browser.new_page()
        for url in (base, base + "client.html?playbackPath=scene.viser"):  # embedded scene; streamed recording
            assert_object_drawn(screenshot_until(page, url), tmp_path, url.rsplit("/", 1)[-1] or "index")
        page.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_live_viewer_buttons_pause_and_snapshot(tmp_path, browser):
    from steinsplat.trainer import StepLog
    from steinsplat.viewer import LiveConfig, ViewerConfig, start_live_viewer, stop_live_viewer

    said: list[str] = []
    server, live = start_live_viewer(ViewerConfig(port=0), LiveConfig(push_every=5, snapshot_dir=tmp_path / "snaps"),
                                     "a red blob", say=said.append)
    trainer = SimpleNamespace(g=coloured_blob(600), state=SimpleNamespace(step=0), cfg=SimpleNamespace(steps=100))

    def step(k: int) -> None:
        trainer.state.step = k
        live.on_step(StepLog(step=k, loss=0.125, grad_variance=3.5, gaussians=len(trainer.g), seconds=0.1), trainer)

    try:
        for k in range(1, 6):
            step(k)
        live.flush()
        assert live.pushes >= 1
        page = browser.new_page()
        assert_object_drawn(screenshot_until(page, f"http://127.0.0.1:{server.get_port()}/"), tmp_path, "live")
        # Pause on the page: the loop blocks inside on_step.
        page.get_by_role("button", name="Pause").click()
        deadline = time.perf_counter() + 10
        while not live.paused and time.perf_counter() < deadline:
            time.sleep(0.05)
        assert live.paused
        runner = threading.Thread(target=step, args=(6,))
        runner.start()
        time.sleep(1.0)
        assert runner.is_alive(), "on_step returned while paused"
        deadline = time.perf_counter() + 10  # the readout reaches the page over the websocket: poll, do not race
        values = input_values(page)
        while "6 / 100" not in values and time.perf_counter() < deadline:
            time.sleep(0.1)
            values = input_values(page)
        assert "6 / 100" in values and "0.125" in values and "3.5" in values and "600" in values, values
        # Snapshot while paused: written at once, atomically, readable.
        page.get_by_role("button", name="Save snapshot PLY").click()
        snap = tmp_path / "snaps" / "step_000006.ply"
        deadline = time.perf_counter() + 15
        while not snap.exists() and time.perf_counter() < deadline:
            time.sleep(0.05)
        assert snap.exists() and len(load_gaussians(snap)) == 600
        assert not [p for p in snap.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
        page.get_by_role("button", name="Resume").click()
        runner.join(timeout=10)
        assert not runner.is_alive(), "Resume did not release the loop"
        page.close()
    finally:
        stop_live_viewer(server, live)
    assert any("live viewer at http://127.0.0.1:" in s for s in said) and any("saved snapshot" in s for s in said)


def test_generate_with_viewer_calls_the_live_hook(tmp_path, capsys, monkeypatch, one_intra_op_thread):
    from steinsplat.viewer import live as live_mod

    calls = []
    original = live_mod.LiveViewer.on_step
    monkeypatch.setattr(live_mod.LiveViewer, "on_step", lambda self, log, tr: (calls.append(tr.state.step),
                                                                                original(self, log, tr)))
    port = free_port()
    out = tmp_path / "cube.ply"
    argv = ["a red cube", "--guidance", "sds", "--steps", "4", "--resolution", "16", "--views", "1",
            "--init-gaussians", "60", "--checkpoint-every", "0", "--preview-every", "0", "--out", str(out),
            "--viewer", str(port), "--viewer-every", "2"]
    assert main(argv) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"live viewer at http://127.0.0.1:{port}/" in err and "live viewer closed" in err
    assert calls == [1, 2, 3, 4] and len(load_gaussians(out)) > 0
    with socket.socket() as s:  # the server is gone: the port is free again
        s.bind(("127.0.0.1", port))
