"""The live viewer of a generation: `LiveViewer.on_step(log, trainer)` is called by the training loop.

Cost on the loop, by design:
- every `push_every` steps the loop copies the Gaussians' raw tensors to numpy (a few hundred kB)
  and hands them to a background thread, which activates them (numpy only: a torch op in a second
  thread starts a second OpenMP team and slows the training threads) and sends them to the page;
  a push still in flight is replaced by the newer one, never queued, so a slow browser cannot slow
  the run;
- the readout (step, loss, variance, Gaussian count) is updated at most `readout_seconds` apart;
- otherwise `on_step` only reads two flags.
Buttons: Pause blocks the loop inside `on_step` until Resume (or a stop signal: the run then saves
and ends as on Ctrl-C); "Save snapshot PLY" asks the loop for a
copy at its next step (or at once while paused) and writes it atomically beside the run's output.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..gaussians import Gaussians
from .server import SplatScene, ViewerConfig, start_server, stop_server, url
from .splats import RawSplats, activate, raw_splats


@dataclass
class LiveConfig:
    """How often the live page follows the run."""

    push_every: int = 10  # steps between splat updates sent to the page
    readout_seconds: float = 0.5  # minimum wall time between readout updates (step, loss, ...)
    snapshot_dir: Path = Path("snapshots")  # where "Save snapshot PLY" writes step_NNNNNN.ply


def write_snapshot(g: Gaussians, folder: Path, step: int) -> Path:
    """Write `g` as a 3DGS PLY `folder/step_NNNNNN.ply` (atomically, like every steinsplat export)."""
    from ..export import write_ply

    path = folder / f"step_{step:06d}.ply"
    write_ply(path, g)
    return path


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"


class LiveViewer:
    """A viser page that follows one training run; see the module docstring for what it costs."""

    def __init__(self, server: Any, cfg: LiveConfig, title: str = "steinsplat",
                 on_saved: Optional[Callable[[Path], None]] = None) -> None:
        self.server, self.cfg, self.on_saved = server, cfg, on_saved
        gui = server.gui
        with gui.add_folder("Run"):
            self.prompt = gui.add_text("Prompt", title, disabled=True)
            self.step = gui.add_text("Step", "0", disabled=True)
            self.loss = gui.add_text("Loss", "-", disabled=True)
            self.variance = gui.add_text("Variance", "-", disabled=True)
            self.gaussians = gui.add_text("Gaussians", "0", disabled=True)
            self.pause_button = gui.add_button("Pause", icon=None)
            self.resume_button = gui.add_button("Resume", visible=False)
            self.snapshot_button = gui.add_button("Save snapshot PLY")
            self.status = gui.add_text("Status", "running", disabled=True)
        self.scene = SplatScene(server, title)
        self._paused = threading.Event()
        self._snapshot_wanted = threading.Event()
        self._last_readout = -math.inf
        self.should_stop: Optional[Callable[[], bool]] = None  # the run's "a signal asked to stop" (set by generate)
        self._framed = False
        self.pause_button.on_click(lambda _: self.pause())
        self.resume_button.on_click(lambda _: self.resume())
        self.snapshot_button.on_click(lambda _: self._snapshot_wanted.set())
        # The push thread: one slot holding the newest copy, a condition to wake the thread.
        self._slot: Optional[RawSplats] = None
        self._cond = threading.Condition()
        self._closed = False
        self.pushes = 0  # splat updates sent (for tests and the final report)
        self._sending = False  # the push thread is sending a copy it took from the slot
        self._thread = threading.Thread(target=self._push_loop, name="steinsplat-viewer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- buttons
    def pause(self) -> None:
        self._paused.set()
        self.pause_button.visible, self.resume_button.visible = False, True
        self.status.value = "paused"

    def resume(self) -> None:
        self._paused.clear()
        self.pause_button.visible, self.resume_button.visible = True, False
        self.status.value = "running"

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    # ---------------------------------------------------------------- the training loop's hook
    def on_step(self, log: Any, trainer: Any, should_stop: Optional[Callable[[], bool]] = None) -> None:
        """Called after every step with (StepLog | None, Trainer); blocks while paused, until Resume or
        until `should_stop()` is true (Ctrl-C / SIGTERM / SIGHUP asked the run to stop and save)."""
        should_stop = should_stop or self.should_stop
        s = int(trainer.state.step)
        last = hasattr(trainer, "cfg") and s >= trainer.cfg.steps  # the page ends on the final state
        now = time.perf_counter()
        if now - self._last_readout >= self.cfg.readout_seconds or self.paused or last:
            self._readout(log, trainer, s)
            self._last_readout = now
        if s % max(self.cfg.push_every, 1) == 0 or not self._framed or self.paused or last:
            self.push(trainer.g)
        if self._snapshot_wanted.is_set():
            self._snapshot(trainer.g, s)
        if self.paused:
            while self.paused and not self._closed:
                if should_stop is not None and should_stop():
                    self.status.value = "stopping (signal): saving the step"
                    return
                if self._snapshot_wanted.wait(timeout=0.1):
                    self._snapshot(trainer.g, s)

    def _readout(self, log: Any, trainer: Any, s: int) -> None:
        self.step.value = f"{s} / {trainer.cfg.steps}" if hasattr(trainer, "cfg") else str(s)
        if log is not None:
            self.loss.value = _fmt(log.loss)
            self.variance.value = _fmt(log.grad_variance)
        self.gaussians.value = f"{len(trainer.g):,}"

    def push(self, g: Gaussians) -> None:
        """Hand a numpy copy of `g`'s raw parameters to the push thread (replacing one not yet sent)."""
        copy = raw_splats(g)
        with self._cond:
            self._slot = copy
            self._cond.notify()

    def _push_loop(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._closed:
                    self._cond.wait()
                if self._slot is None:
                    return
                g, self._slot = self._slot, None
                self._sending = True  # taken but not yet on the page: flush waits for this too
            try:
                self.scene.show(activate(g), frame_camera=not self._framed)  # numpy only (see splats.activate)
                self._framed = True
                self.pushes += 1
            except Exception as exc:  # a dropped page must not end the run; say it on the page
                self.status.value = f"update failed: {exc}"
            finally:
                with self._cond:
                    self._sending = False

    def _snapshot(self, g: Gaussians, step: int) -> None:
        self._snapshot_wanted.clear()
        try:
            path = write_snapshot(g.detached_copy().to("cpu"), self.cfg.snapshot_dir, step)
        except Exception as exc:  # ExportError, OSError: report on the page, keep training
            self.status.value = f"snapshot failed: {exc}"
            return
        self.status.value = f"saved {path}"
        if self.on_saved is not None:
            self.on_saved(path)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the newest pushed copy is on the page (tests, end of run)."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            with self._cond:
                if self._slot is None and not self._sending:
                    break
            time.sleep(0.01)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._paused.clear()
        self._thread.join(timeout=10.0)


def start_live_viewer(cfg: ViewerConfig, live: LiveConfig, title: str,
                      say: Callable[[str], None], warn: Optional[Callable[[str], None]] = None) -> tuple[Any, LiveViewer]:
    """Start a server and a `LiveViewer` on it; says the address. Returns (server, viewer)."""
    server = start_server(cfg, warn)
    viewer = LiveViewer(server, live, title, on_saved=lambda p: say(f"viewer: saved snapshot {p}"))
    say(f"live viewer at {url(server)}")
    return server, viewer


def stop_live_viewer(server: Any, viewer: LiveViewer) -> None:
    viewer.close()
    stop_server(server)
