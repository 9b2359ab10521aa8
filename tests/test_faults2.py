"""The second fault corpus (issue 25): a viewer only its own page can drive, bounded readers, no output
that overwrites another, signals that always save, and one line (exit 2) instead of a traceback.

Like the first corpus (tests/test_faults.py) every case runs in process where it can, under an
alarm that turns a hang into a failure; signals, pipes and closed streams use real processes.
Network use is 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from steinsplat.export import write_ply
from steinsplat.gaussians import Gaussians

from test_faults import run_bad

CUBE = "a red cube"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(argv, capsys, seconds: int = 60):
    """main(argv) under an alarm; (exit code, stderr): the first corpus's runner, argv items as text."""
    return run_bad([str(a) for a in argv], capsys, seconds)


def one_line(code, err: str, word=None) -> str:
    assert "Traceback" not in err, err[-2000:]
    assert code == 2, f"exit {code!r}: {err[-800:]}"
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error:"), err[-800:]
    assert len(lines[-1]) < 800
    if word is not None:
        assert word.lower() in lines[-1].lower(), lines[-1]
    return lines[-1]


def _cli_proc(args, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STEINSPLAT_COMPILE": "0", "PYTHONPATH": SRC}
    env.update(kw.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "steinsplat.cli", *map(str, args)], env=env, **kw)


@pytest.fixture(scope="module")
def ply(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("f2") / "ok.ply"
    write_ply(p, Gaussians.random_ball(30, generator=torch.Generator().manual_seed(0)))
    return p


# ============================================================================ security: the viewer
def _handshake(port: int, origin, host=None) -> int:
    """A raw WebSocket opening handshake on 127.0.0.1:port; returns the HTTP status."""
    key = base64.b64encode(os.urandom(16)).decode()
    import viser

    lines = ["GET / HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Protocol: viser-v{viser.__version__}"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status = s.recv(4096).split(b"\r\n", 1)[0]
    return int(status.split()[1])


@pytest.fixture
def viewer_server():
    pytest.importorskip("viser")
    from steinsplat.viewer.server import ViewerConfig, start_server, stop_server

    started = []

    def start(**kw):
        server = start_server(ViewerConfig(host="127.0.0.1", port=0, **kw))
        started.append(server)
        return server

    yield start
    for s in started:
        stop_server(s)


def test_viewer_refuses_a_websocket_from_another_origin(viewer_server):
    server = viewer_server()
    port = server.get_port()
    assert _handshake(port, "http://evil.example.com") == 403
    assert _handshake(port, f"http://evil.example.com:{port}", host=f"evil.example.com:{port}") == 403  # DNS rebinding
    assert _handshake(port, "null") == 403  # a sandboxed frame or a file:// page
    assert _handshake(port, f"http://127.0.0.1:{port + 1}") == 403  # another local server's page


def test_viewer_accepts_its_own_page(viewer_server):
    import websockets.sync.client as wsc
    import viser

    server = viewer_server()
    port = server.get_port()
    assert _handshake(port, f"http://127.0.0.1:{port}") == 101
    assert _handshake(port, f"http://localhost:{port}", host=f"localhost:{port}") == 101
    assert _handshake(port, None) == 101  # not a browser (no Origin): a local program
    with wsc.connect(f"ws://127.0.0.1:{port}", origin=f"http://127.0.0.1:{port}",
                     subprotocols=[f"viser-v{viser.__version__}"], open_timeout=5) as ws:
        assert isinstance(ws.recv(timeout=5), bytes)  # the scene is served to the page


def test_viewer_allow_origin_adds_one(viewer_server):
    server = viewer_server(allow_origin=("http://dashboard.example:9000",))
    port = server.get_port()
    assert _handshake(port, "http://dashboard.example:9000") == 101
    assert _handshake(port, "http://evil.example.com") == 403


def test_viewer_refuses_a_bad_allow_origin(ply, capsys):
    code, err = run_cli(["view", ply, "--port", "0", "--allow-origin", "evil.example.com/path"], capsys)
    one_line(code, err, "--allow-origin")


def test_share_link_is_off_unless_asked(viewer_server, monkeypatch):
    import msgspec
    import viser
    import viser._viser as vv
    import websockets.sync.client as wsc

    tunnels = []

    class FakeTunnel:  # what viser would open to share.viser.studio
        def __init__(self, *a, **k):
            tunnels.append(a)

    monkeypatch.setattr(vv, "ViserTunnel", FakeTunnel)
    server = viewer_server()
    port = server.get_port()
    with wsc.connect(f"ws://127.0.0.1:{port}", origin=f"http://127.0.0.1:{port}",
                     subprotocols=[f"viser-v{viser.__version__}"], open_timeout=5) as ws:
        ws.send(msgspec.msgpack.encode({"type": "ShareUrlRequest"}))
        time.sleep(0.5)
    assert tunnels == []
    assert server.request_share_url() is None


def test_view_port_65535_taken_is_one_line_not_a_hang(ply, capsys):
    pytest.importorskip("viser")
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 65535))
    except OSError:
        pass  # taken already: the case holds all the same
    s.listen(1)
    try:
        code, err = run_cli(["view", ply, "--port", "65535"], capsys, seconds=20)
    finally:
        s.close()
    one_line(code, err, "--port")


# ============================================================================ security: bounded readers
def _spz_payload(g: Gaussians, tmp: Path) -> bytes:
    from steinsplat.export import write_spz

    write_spz(tmp / "src.spz", g)
    return gzip.decompress((tmp / "src.spz").read_bytes())


def _peak_bytes(fn) -> int:
    """Peak of Python-allocated memory (bytes objects from zlib, zstandard, numpy arrays) while fn runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_spz_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    """A header saying 10 Gaussians over a gzip stream of 256 MiB of zeros: refused, never inflated whole."""
    import zlib

    from steinsplat.export import SpzError, read_spz

    header = struct.pack("<IIIBBBB", 0x5053474E, 3, 10, 0, 12, 0, 0)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(header)] + [c.compress(bytes(1 << 20)) for _ in range(256)] + [c.flush()]
    bomb = tmp_path / "bomb.spz"
    bomb.write_bytes(b"".join(parts))
    assert bomb.stat().st_size < 1 << 20

    def read():
        with pytest.raises(SpzError, match="more than"):
            read_spz(bomb)

    assert _peak_bytes(read) < 16 << 20


def test_spz_v4_count_is_checked_against_its_bytes(tmp_path):
    """A small version-4 (zstd) file whose header and table claim 20 M Gaussians: refused at once."""
    pytest.importorskip("zstandard")
    from steinsplat.export import SpzError, read_spz

    n = 20_000_000
    sizes = [9 * n, n, 3 * n, 3 * n, 4 * n]
    head = struct.pack("<IIIBBBBI", 0x5053474E, 4, n, 0, 12, 0, len(sizes), 32) + bytes(12)  # 32-byte header
    toc = b"".join(struct.pack("<QQ", 2000, s) for s in sizes)
    p = tmp_path / "v4.spz"
    p.write_bytes(head + toc + os.urandom(10_000))

    def read():
        with pytest.raises(SpzError, match="Gaussians"):
            read_spz(p)

    assert _peak_bytes(read) < 16 << 20


def test_spz_v4_streams_are_measured_not_trusted(tmp_path):
    """A count that the file size allows but whose zstd streams hold other sizes: refused, memory small."""
    zstd = pytest.importorskip("zstandard")
    from steinsplat.export import SpzError, read_spz

    n = 100_000  # 2 MB of sections; the streams hold 1 KiB each
    sizes = [9 * n, n, 3 * n, 3 * n, 4 * n]
    streams = [zstd.ZstdCompressor().compress(bytes(1024)) for _ in sizes]
    head = struct.pack("<IIIBBBBI", 0x5053474E, 4, n, 0, 12, 0, len(sizes), 32) + bytes(12)  # 32-byte header
    toc = b"".join(struct.pack("<QQ", len(s), u) for s, u in zip(streams, sizes))
    p = tmp_path / "v4-short.spz"
    p.write_bytes(head + toc + b"".join(streams) + os.urandom(200))
    with pytest.raises(SpzError, match="fewer bytes"):
        read_spz(p)


def test_spz_payload_larger_than_its_count_is_refused(tmp_path):
    """30 Gaussians of data under a header saying 20: refused (it was read as garbage, scales of 379)."""
    from steinsplat.export import SpzError, read_spz

    raw = bytearray(_spz_payload(Gaussians.random_ball(30, generator=torch.Generator().manual_seed(1)), tmp_path))
    struct.pack_into("<I", raw, 8, 20)
    p = tmp_path / "more.spz"
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(SpzError, match="does not match"):
        read_spz(p)


def test_spz_with_no_gaussians_is_one_line(tmp_path, capsys):
    p = tmp_path / "zero.spz"
    p.write_bytes(gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 3, 0, 0, 12, 0, 0)))
    code, err = run_cli(["info", p], capsys)
    one_line(code, err, "0 Gaussians")


def test_numba_threads_0_is_not_a_corrupt_file(tmp_path, capsys, monkeypatch):
    from steinsplat.export import write_spz

    p = tmp_path / "ok.spz"
    write_spz(p, Gaussians.random_ball(10, generator=torch.Generator().manual_seed(0)))
    monkeypatch.setenv("NUMBA_NUM_THREADS", "0")
    code, err = run_cli(["info", p], capsys)
    last = one_line(code, err, "NUMBA_NUM_THREADS")
    assert "corrupt" not in last


@pytest.mark.parametrize("command", ["info", "export", "view"])
def test_a_fifo_or_a_device_is_refused_not_read(tmp_path, capsys, command):
    fifo = tmp_path / "pipe.ply"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/zero")):
        argv = [command, target] + (["--to", tmp_path / "x.splat"] if command == "export" else [])
        code, err = run_cli(argv, capsys, seconds=20)
        one_line(code, err)


def test_ply_is_read_without_a_memory_map(tmp_path, monkeypatch):
    """A PLY cut or rewritten while it is read must give PlyError, not SIGBUS through a map."""
    import plyfile

    from steinsplat.export import read_ply

    p = tmp_path / "a.ply"
    write_ply(p, Gaussians.random_ball(50, generator=torch.Generator().manual_seed(0)))
    seen = []
    real = plyfile.PlyData.read

    def spy(stream, *a, **k):
        seen.append(k.get("mmap", True))
        return real(stream, *a, **k)

    monkeypatch.setattr(plyfile.PlyData, "read", spy)
    assert len(read_ply(p)) == 50
    assert seen == [False]


# ============================================================================ presets
def _laughs(levels: int) -> str:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "steps:\n  " + "\n  ".join(lines) + "\n"


def test_yaml_aliases_that_expand_are_refused_quickly(tmp_path, capsys):
    p = tmp_path / "laughs.yaml"
    p.write_text(_laughs(9))  # 9^9 = 387 M values once expanded, in ~300 bytes
    t0 = time.perf_counter()
    code, err = run_cli([CUBE, "--config", p, "--out", tmp_path / "x.ply"], capsys, seconds=30)
    one_line(code, err, "alias")
    assert time.perf_counter() - t0 < 5


def test_an_error_never_prints_an_expanded_value_whole():
    from steinsplat.config import _shown

    big = [[list(range(1000))] * 1000] * 100  # 100 M values, shared
    t0 = time.perf_counter()
    assert len(_shown(big)) < 100
    assert time.perf_counter() - t0 < 1


def test_yaml_nested_thousands_deep_is_one_line(tmp_path, capsys):
    p = tmp_path / "deep.yaml"
    p.write_text("steps: " + "[" * 5000 + "]" * 5000 + "\n")
    code, err = run_cli([CUBE, "--config", p, "--out", tmp_path / "x.ply"], capsys)
    one_line(code, err, "nested")
    q = tmp_path / "deep2.yaml"
    q.write_text("steps: " + "[" * 100 + "]" * 100 + "\n")
    code, err = run_cli([CUBE, "--config", q, "--out", tmp_path / "x.ply"], capsys)
    one_line(code, err, "nested")


def test_yaml_duplicate_key_is_refused(tmp_path, capsys):
    p = tmp_path / "dup.yaml"
    p.write_text("steps: 10\nseed: 1\nsteps: 20\n")
    code, err = run_cli([CUBE, "--config", p, "--out", tmp_path / "x.ply"], capsys)
    one_line(code, err, "twice")
    q = tmp_path / "dup-nested.yaml"
    q.write_text("optim:\n  lr_means: 0.1\n  lr_means: 0.2\n")
    code, err = run_cli([CUBE, "--config", q, "--out", tmp_path / "x.ply"], capsys)
    one_line(code, err, "lr_means")


def test_yaml_self_referencing_alias_is_refused(tmp_path, capsys):
    p = tmp_path / "loop.yaml"
    p.write_text("steps: &x [*x]\n")
    code, err = run_cli([CUBE, "--config", p, "--out", tmp_path / "x.ply"], capsys)
    one_line(code, err, "alias")


def test_config_given_a_folder_says_so(tmp_path, capsys):
    (tmp_path / "presets").mkdir()
    code, err = run_cli([CUBE, "--config", tmp_path / "presets", "--out", tmp_path / "x.ply"], capsys)
    one_line(code, err, "is a folder")
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    code, err = run_cli([CUBE, "--config", fifo, "--out", tmp_path / "x.ply"], capsys, seconds=20)
    one_line(code, err)


# ============================================================================ nothing lost
def test_outputs_naming_one_file_are_refused(tmp_path, capsys):
    out = tmp_path / "c.ply"
    code, err = run_cli([CUBE, "--out", out, "--mesh", out, "--quiet"], capsys)
    one_line(code, err, "both name")
    code, err = run_cli([CUBE, "--out", out, "--mesh", tmp_path / "sub" / ".." / "c.ply", "--quiet"], capsys)
    one_line(code, err, "both name")
    out.write_bytes(b"x")
    (tmp_path / "v.gif").symlink_to(out)
    code, err = run_cli([CUBE, "--out", out, "--video", tmp_path / "v.gif", "--quiet"], capsys)
    one_line(code, err, "both name")
    assert out.read_bytes() == b"x"


def _fake_checkpoint(path: Path, step, prompt=CUBE, extra=(), shapes=None, out_name=None) -> Path:
    """A checkpoint header as generate writes it (options of `prompt` + extra), with small tensors."""
    from steinsplat import config
    from steinsplat.checkpoint import write_checkpoint
    from steinsplat.pipeline import GenerateConfig, run_options

    cfg = config.parse(GenerateConfig, [prompt, *extra], prog="steinsplat")
    n = 4
    shapes = shapes or {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3),
                        "shN": (n, 0, 3)}
    tensors = {f"gaussians.{k}": torch.zeros(s) for k, s in shapes.items()}
    tensors["rng.generator"] = torch.Generator().get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": step, "skipped": 0, "history": [], "options": run_options(cfg, "shapeworld")}
    if out_name:
        meta["run"] = {"out": out_name}
    write_checkpoint(path, tensors, meta)
    return path


def test_a_second_prompt_into_a_run_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "shared"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "ok", "prompt": "a blue sphere",
                                              "config": {"out": str(run / "s.ply")}}))
    code, err = run_cli([CUBE, "--out", run / "c.ply", "--quiet"], capsys)
    one_line(code, err, "another run")
    other = tmp_path / "ckpt-only"
    _fake_checkpoint(other / "checkpoints" / "step_000010.safetensors", 10, prompt="a blue sphere", out_name="s.ply")
    code, err = run_cli([CUBE, "--out", other / "c.ply", "--quiet"], capsys)
    one_line(code, err, "another run")
    code, err = run_cli(["a blue sphere", "--out", other / "t.ply", "--quiet"], capsys)  # same prompt, other file
    one_line(code, err, "another run")


def test_the_same_run_again_may_use_its_folder(tmp_path):
    from steinsplat import config
    from steinsplat.pipeline import GenerateConfig, validate_outputs

    run = tmp_path / "mine"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "ok", "prompt": CUBE, "config": {"out": str(run / "c.ply")}}))
    cfg = config.parse(GenerateConfig, [CUBE, "--out", str(run / "c.ply")], prog="steinsplat")
    assert validate_outputs(cfg) == run / "c.ply"


def test_resume_with_another_seed_is_refused(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path / "r" / "checkpoints" / "step_000002.safetensors", 2, extra=["--seed", "0"])
    t0 = time.perf_counter()
    code, err = run_cli([CUBE, "--out", tmp_path / "r" / "c.ply", "--seed", "5", "--resume", ckpt, "--quiet"], capsys)
    one_line(code, err, "--seed")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("step,word", [(-5, "whole number"), (2.5, "whole number"), (10**6, "beyond --steps"),
                                       ("3", "whole number"), (True, "whole number")])
def test_checkpoint_step_is_validated_before_models_load(tmp_path, capsys, step, word):
    ckpt = _fake_checkpoint(tmp_path / "r" / "checkpoints" / "step_000002.safetensors", step)
    t0 = time.perf_counter()
    code, err = run_cli([CUBE, "--out", tmp_path / "r" / "c.ply", "--resume", ckpt, "--quiet"], capsys)
    one_line(code, err, word)
    assert time.perf_counter() - t0 < 5


def test_checkpoint_tensors_of_the_wrong_shape_are_refused_before_models_load(tmp_path, capsys):
    bad = {"means": (4, 2), "scales": (4, 3), "quats": (4, 4), "opacities": (4,), "sh0": (4, 1, 3)}
    ckpt = _fake_checkpoint(tmp_path / "r" / "checkpoints" / "step_000002.safetensors", 2, shapes=bad)
    code, err = run_cli([CUBE, "--out", tmp_path / "r" / "c.ply", "--resume", ckpt, "--quiet"], capsys)
    one_line(code, err, "gaussians.means")


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_learning_rate_negative_or_nan_is_refused_before_the_run(tmp_path, capsys, value):
    code, err = run_cli([CUBE, "--out", tmp_path / "c.ply", "--optim.lr-means", value, "--quiet"], capsys)
    one_line(code, err, "--optim.lr-means")


TINY = ["--steps", "2", "--resolution", "16", "--views", "1", "--init-gaussians", "40", "--preview-every", "0", "--quiet"]


def test_full_disk_at_the_final_checkpoint_still_writes_the_result(tmp_path, capsys, monkeypatch, one_intra_op_thread):
    """The final checkpoint does not fit (ENOSPC from safetensors) but the small splat file does: it is
    written, the miss is said in one warning line and recorded in run.json."""
    import errno

    from steinsplat import checkpoint

    real = checkpoint.write_checkpoint

    def full_at_the_end(path, tensors, meta):
        if "step_000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors, meta)

    monkeypatch.setattr(checkpoint, "write_checkpoint", full_at_the_end)
    out = tmp_path / "run" / "c.ply"
    code, err = run_cli([CUBE, "--out", out, "--checkpoint-every", "1", *TINY], capsys, seconds=120)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert out.is_file()
    assert "No space left on device" in err and "final checkpoint" in err
    rec = json.loads((out.parent / "run.json").read_text())
    assert rec["not_written"] and "No space" in rec["not_written"][0]


def test_full_disk_for_everything_is_one_line(tmp_path, capsys, monkeypatch, one_intra_op_thread):
    import errno

    from steinsplat import checkpoint
    from steinsplat.export import atomic

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_checkpoint", full)
    monkeypatch.setattr(atomic.os, "fsync", full)  # every atomic write fails as on a full disk
    out = tmp_path / "run" / "c.ply"
    code, err = run_cli([CUBE, "--out", out, "--checkpoint-every", "1", *TINY], capsys, seconds=120)
    one_line(code, err, "No space left on device")
    assert not out.exists() and not list(out.parent.glob(".*tmp*"))


# ============================================================================ signals
def test_sighup_stops_a_loop_like_ctrl_c():
    from steinsplat.interrupts import StopOnSignal

    safety = signal.signal(signal.SIGHUP, lambda *a: None)  # were SIGHUP not handled, the test process must survive
    try:
        with StopOnSignal(message=None) as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            assert stop.requested == "SIGHUP"
    finally:
        signal.signal(signal.SIGHUP, safety)


def test_sighup_during_a_run_saves_the_step(tmp_path):
    """A closed terminal (SIGHUP) stops the run between two steps and saves it, as Ctrl-C does."""
    out = tmp_path / "run" / "c.ply"
    p = _cli_proc([CUBE, "--out", out, "--steps", "400", "--resolution", "16", "--views", "1", "--init-gaussians", "40",
                   "--checkpoint-every", "0", "--preview-every", "1", "--quiet"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out.parent / "previews" / "step_000001.png"
    deadline = time.time() + 120
    while not first.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[1][-2000:]
    p.send_signal(signal.SIGHUP)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "SIGHUP" in err and "--resume" in err and "Traceback" not in err
    assert list((out.parent / "checkpoints").glob("step_*.safetensors"))


def test_sigterm_during_an_export_removes_the_temporary(tmp_path, ply):
    """SIGTERM while the output is being written: exit 130, no hidden temporary file left, no output."""
    code = (
        "import os, signal, sys, time\n"
        "from steinsplat.export import ply\n"
        "real = ply._write_array\n"
        "def slow(f, v):\n"
        "    f.write(b'x' * 100000); f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
        "ply._write_array = slow\n"
        "from steinsplat.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out" / "big.ply"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
    r = subprocess.run([sys.executable, "-c", code, "export", str(ply), "--to", str(out)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_a_paused_live_run_lets_go_on_a_signal(tmp_path):
    """Pause on the page, then Ctrl-C: on_step returns (the loop then stops and saves) instead of waiting."""
    pytest.importorskip("viser")
    from types import SimpleNamespace

    from steinsplat.viewer import LiveConfig, LiveViewer
    from steinsplat.viewer.server import ViewerConfig, start_server, stop_server

    server = start_server(ViewerConfig(port=0))
    viewer = LiveViewer(server, LiveConfig(snapshot_dir=tmp_path))
    try:
        g = Gaussians.random_ball(20, generator=torch.Generator().manual_seed(0))
        trainer = SimpleNamespace(state=SimpleNamespace(step=3), g=g, cfg=SimpleNamespace(steps=10))
        viewer.pause()
        asked = threading.Event()
        threading.Timer(0.3, asked.set).start()
        returned = threading.Event()

        def step():
            viewer.on_step(None, trainer, should_stop=asked.is_set)
            returned.set()

        t = threading.Thread(target=step, daemon=True)
        t.start()
        t.join(5)
        assert returned.is_set(), "a paused run ignored the stop signal"
    finally:
        viewer.close()
        stop_server(server)


# ============================================================================ pipes and streams (real processes)
def test_help_into_a_closed_pipe_is_one_line():
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader is gone (`steinsplat --help | head -0`)
    try:
        p = _cli_proc(["--help"], stdout=w_fd, stderr=subprocess.PIPE, text=True)
        _, err = p.communicate(timeout=60)
    finally:
        os.close(w_fd)
    one_line(p.returncode, err, "standard output")


@pytest.mark.parametrize("how", ["closed", "full"])
def test_info_to_a_closed_or_full_stdout_is_one_line(ply, how):
    if how == "full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") if how == "full" else open(os.devnull) as f:
        kw = {"stdout": f} if how == "full" else {"stdout": subprocess.DEVNULL, "preexec_fn": lambda: os.close(1)}
        p = _cli_proc(["info", ply], stderr=subprocess.PIPE, text=True, **kw)
        _, err = p.communicate(timeout=60)
    one_line(p.returncode, err, "standard output")


def test_a_warning_is_one_line_without_source_code(tmp_path):
    """The dropped-rows warning ended stderr with a line of steinsplat's source code; now it is one line."""
    from steinsplat.export.ply import ply_header

    rows = np.zeros((6, 17), np.float32)  # [N, 17]: a degree-0 3DGS PLY in file order
    rows[:, 14] = 1.0  # rot_0
    rows[0, 0] = np.nan
    src = tmp_path / "nan-row.ply"
    src.write_bytes(ply_header(6, 0) + rows.tobytes())
    p = _cli_proc(["export", src, "--to", tmp_path / "o.splat"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("warning:") and "dropped 1 of 6" in lines[0], err
    assert not lines[1].startswith(" ") and "warnings.warn" not in err and "RuntimeWarning" not in err, err


# ============================================================================ batch names and inputs
def test_batch_names_never_collide_with_another_lines_own_slug():
    from steinsplat.batch import Job, assign_names

    jobs = [Job(1, "a red cube", []), Job(2, "a red cube", []), Job(3, "a red cube 2", [])]
    assign_names(jobs)
    names = [j.name for j in jobs]
    assert len(set(names)) == 3, names
    assert names[:2] == ["a-red-cube", "a-red-cube-2"]


def test_batch_runs_every_line_even_when_slugs_collide(tmp_path):
    from steinsplat.batch import parse_prompt_file, run_batch

    f = tmp_path / "p.txt"
    f.write_text("a red cube\na red cube\na red cube 2\n")
    ran = []

    def gen(job, folder):
        ran.append(job.prompt)
        (folder / "run.json").write_text(json.dumps({"status": "ok", "prompt": job.prompt}))
        return {}

    results = run_batch(parse_prompt_file(f), tmp_path / "out", gen)
    assert [r.status for r in results] == ["ok", "ok", "ok"] and len(ran) == 3


def test_batch_does_not_skip_a_folder_finished_by_another_prompt(tmp_path):
    from steinsplat.batch import Job, run_batch

    (tmp_path / "out" / "a-red-cube").mkdir(parents=True)
    (tmp_path / "out" / "a-red-cube" / "run.json").write_text(json.dumps({"status": "ok", "prompt": "A red cube!"}))
    res = run_batch([Job(1, "a red cube", [], "a-red-cube")], tmp_path / "out", lambda job, folder: {})
    assert res[0].status == "ok"


@pytest.mark.parametrize("word", ["con", "NUL", "aux", "com1", "lpt9"])
def test_reserved_device_names_are_not_slugs(word):
    from steinsplat.batch import slugify

    assert slugify(word) not in {"con", "nul", "aux", "com1", "lpt9"}
    assert slugify(word).startswith(word.lower())


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_batch_prompt_list_must_be_a_regular_file(tmp_path, capsys, target):
    if target == "fifo":
        target = tmp_path / "prompts.txt"
        os.mkfifo(target)
    code, err = run_cli(["batch", target, "--out-dir", tmp_path / "r"], capsys, seconds=20)
    one_line(code, err)


def test_batch_prompt_list_too_large_is_refused(tmp_path, capsys, monkeypatch):
    from steinsplat import batch

    monkeypatch.setattr(batch, "MAX_PROMPT_FILE_BYTES", 1000)
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n" * 200)
    code, err = run_cli(["batch", f, "--out-dir", tmp_path / "r"], capsys)
    one_line(code, err, "too large")


def test_a_fifo_in_a_resume_folder_is_skipped_not_waited_on(tmp_path):
    from steinsplat.pipeline import find_checkpoint

    run = tmp_path / "run"
    good = _fake_checkpoint(run / "checkpoints" / "step_000002.safetensors", 2)
    os.mkfifo(run / "checkpoints" / "step_000009.safetensors")
    notes, found = [], []
    # a thread, not an alarm: opening a FIFO inside safetensors' native code does not return to Python
    t = threading.Thread(target=lambda: found.append(find_checkpoint(run, say=notes.append)), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # let the blocked open return, so that the test process is not left with it
        with open(run / "checkpoints" / "step_000009.safetensors", "wb"):
            pass
        pytest.fail("find_checkpoint waited on a FIFO")
    assert found == [good]
    assert notes and "step_000009" in notes[0]


# ============================================================================ sizes that cannot fit
@pytest.mark.parametrize("argv,word", [
    (["shapeworld", "render", CUBE, "--resolution", "1000000", "--out", "{d}/g.png"], "--resolution"),
    (["shapeworld", "sample", CUBE, "--num", "1000000000", "--out", "{d}/s.png"], "--num"),
    (["shapeworld", "sample", CUBE, "--upscale", "1000000", "--out", "{d}/s.png"], "--upscale"),
    (["fit-demo", "--resolution", "100000", "--out", "{d}/fd"], "--resolution"),
], ids=["render-resolution", "sample-num", "sample-upscale", "fit-demo-resolution"])
def test_sizes_that_cannot_fit_are_refused_up_front(tmp_path, capsys, argv, word):
    t0 = time.perf_counter()
    code, err = run_cli([a.replace("{d}", str(tmp_path)) for a in argv], capsys)
    one_line(code, err, word)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("command", ["bench", "study"])
def test_bench_and_study_refuse_an_unwritable_report_folder_at_once(tmp_path, capsys, command):
    f = tmp_path / "a-file"
    f.write_text("x")
    t0 = time.perf_counter()
    code, err = run_cli([command, "--out", f], capsys)
    one_line(code, err, "is a file")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        # root writes anywhere: then /proc stands for the read-only file system
        target = Path("/proc/steinsplat/report") if os.access(ro, os.W_OK) else ro / "report"
        code, err = run_cli([command, "--out", target], capsys)
        one_line(code, err, "cannot write")
    finally:
        ro.chmod(0o700)
    assert time.perf_counter() - t0 < 5


def test_checkpoint_metadata_of_the_wrong_type_is_refused_before_models_load(tmp_path, capsys):
    from safetensors.torch import load_file

    from steinsplat.checkpoint import read_meta, write_checkpoint

    ckpt = _fake_checkpoint(tmp_path / "r" / "checkpoints" / "step_000002.safetensors", 2)
    meta = read_meta(ckpt)
    meta.pop("_tensor_names")
    for key, value in (("history", "lots"), ("options", ["prompt"]), ("densify_scalars", 3)):
        bad = {**meta, key: value}
        write_checkpoint(ckpt, load_file(str(ckpt)), bad)
        code, err = run_cli([CUBE, "--out", tmp_path / "r" / "c.ply", "--resume", ckpt, "--quiet"], capsys)
        one_line(code, err, key)


def test_export_past_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, ply):
    """RLIMIT_FSIZE (EFBIG) while the output is written: one line, exit 2, no temporary, no output."""
    import resource

    out = tmp_path / "o" / "x.ply"
    out.parent.mkdir()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    p = _cli_proc(["export", ply, "--to", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                  preexec_fn=limit)
    _, err = p.communicate(timeout=60)
    one_line(p.returncode, err, "x.ply")
    assert list(out.parent.iterdir()) == []


def test_resuming_a_folder_may_change_its_output_name(tmp_path):
    """--resume of the run in this folder is that run going on: --out may name another file."""
    from steinsplat import config
    from steinsplat.pipeline import GenerateConfig, validate_outputs

    run = tmp_path / "mine"
    _fake_checkpoint(run / "checkpoints" / "step_000002.safetensors", 2, out_name="c.ply")
    cfg = config.parse(GenerateConfig, [CUBE, "--out", str(run / "c.spz"), "--resume", str(run)], prog="steinsplat")
    assert validate_outputs(cfg) == run / "c.spz"


def test_ctrl_c_stops_a_paused_live_run_and_saves_it(tmp_path, capsys, monkeypatch, one_intra_op_thread):
    """A run whose page pressed Pause: Ctrl-C ends it (exit 130) with the step saved, not a hang."""
    pytest.importorskip("viser")
    from steinsplat.viewer import live as live_mod

    original = live_mod.LiveViewer.on_step

    def paused_at_step_2(self, log, tr, **kw):
        if tr.state.step == 2 and not self.paused:
            self.pause()  # as the Pause button does
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        return original(self, log, tr, **kw)

    monkeypatch.setattr(live_mod.LiveViewer, "on_step", paused_at_step_2)
    out = tmp_path / "run" / "c.ply"
    code, err = run_cli([CUBE, "--out", out, "--guidance", "sds", "--steps", "50", "--resolution", "16", "--views", "1",
                         "--init-gaussians", "40", "--checkpoint-every", "0", "--preview-every", "0", "--quiet",
                         "--viewer", "0"], capsys, seconds=60)
    assert code == 130, err[-2000:]
    assert (out.parent / "checkpoints" / "step_000002.safetensors").is_file(), err[-2000:]


def test_a_signal_during_the_exports_after_a_failed_final_checkpoint_says_so(tmp_path, capsys, monkeypatch,
                                                                               one_intra_op_thread):
    """No final checkpoint (full disk) and Ctrl-C during the exports: one line saying both, not 'saved to None'."""
    import errno

    from steinsplat import checkpoint, export

    real_ckpt, real_export = checkpoint.write_checkpoint, export.export_gaussians

    def full_at_the_end(path, tensors, meta):
        if "step_000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_ckpt(path, tensors, meta)

    def export_then_ctrl_c(path, g, **kw):
        n = real_export(path, g, **kw)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        return n

    monkeypatch.setattr(checkpoint, "write_checkpoint", full_at_the_end)
    monkeypatch.setattr(export, "export_gaussians", export_then_ctrl_c)
    out = tmp_path / "run" / "c.ply"
    code, err = run_cli([CUBE, "--out", out, "--checkpoint-every", "1", "--mesh", tmp_path / "run" / "m.ply", *TINY],
                        capsys, seconds=120)
    last = one_line(code, err, "interrupted")
    assert "final checkpoint could not be written" in last and "None" not in last
    assert out.is_file()
