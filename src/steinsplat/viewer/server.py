"""A viser server showing one set of splats: start it, put splats in it, read out count and bounds.

`start_server` binds loopback unless asked otherwise (and warns then: the page has no password and,
during generation, buttons that write files); only the viewer's own page may open its WebSocket
(an `Origin` check, `guard.py`) and viser's public share link stays off unless asked for;
`SplatScene` owns the scene node and the GUI readout;
`view_file` is `steinsplat view`: load, serve, block until Ctrl-C (or SIGTERM), stop cleanly.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .splats import CameraPose, SplatArrays, bounds, framing_camera, splat_arrays

INSTALL_HINT = "the viewer needs viser: pip install 'steinsplat[viewer]'"


class ViewerError(Exception):
    """A problem the user can fix (viser missing, bad port or host); the message says what to do."""


@dataclass
class ViewerConfig:
    """Where the viewer listens."""

    host: str = "127.0.0.1"  # interface to bind; anything but loopback exposes the page to the network
    port: int = 8080  # TCP port (0: any free port); if taken, the next free one up to 65535
    allow_origin: tuple[str, ...] = ()  # extra page origins allowed to connect (the viewer's own page always is)
    share: bool = False  # let a client open viser's public share link (a tunnel through share.viser.studio)


def require_viser() -> Any:
    """Import viser lazily (an optional extra) or explain how to install it."""
    try:
        import viser
    except ImportError as exc:
        raise ViewerError(f"{INSTALL_HINT} ({exc})") from None
    return viser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(cfg: ViewerConfig) -> None:
    if not 0 <= cfg.port <= 65535:
        raise ViewerError(f"--port {cfg.port}: a TCP port is 0..65535 (0 picks a free one)")
    hint = "use 127.0.0.1 (default) or 0.0.0.0 for all interfaces"
    try:
        infos = socket.getaddrinfo(cfg.host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ViewerError(f"--host {cfg.host!r}: not an address or name of this machine; {hint}") from None
    # viser binds in a thread of its own and a failure there is never reported: try the address here
    # (on any free port: a taken --port is fine, viser moves to the next one)
    family, _, _, _, sockaddr = infos[0]
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((sockaddr[0], 0) + tuple(sockaddr[2:]))
    except OSError as exc:
        raise ViewerError(f"--host {cfg.host}: cannot listen on that address ({exc.strerror or exc}): it is not an "
                          f"address of this machine; {hint}") from None
    finally:
        probe.close()
    from .guard import check_origin_value, free_port

    for origin in cfg.allow_origin:
        try:
            check_origin_value(origin)
        except ValueError as exc:
            raise ViewerError(str(exc)) from None
    try:
        free_port(cfg.host, cfg.port)
    except ValueError as exc:
        raise ViewerError(str(exc)) from None


@contextlib.contextmanager
def quiet_stdout():
    """viser prints a banner on start and a line on stop whatever `verbose` says; steinsplat prints its own."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def start_server(cfg: ViewerConfig, warn: Optional[Callable[[str], None]] = None) -> Any:
    """A running `viser.ViserServer` on cfg.host:cfg.port, Z up (steinsplat's world convention)."""
    viser = require_viser()
    check_config(cfg)
    if not is_loopback(cfg.host) and warn is not None:
        warn(f"the viewer listens on {cfg.host}: anyone who can reach this machine on port {cfg.port} can open "
             "it (no password); use the default --host 127.0.0.1 to keep it local")
    from .guard import GuardError, OriginPolicy, free_port, guarded_viser_server

    try:
        port = free_port(cfg.host, cfg.port)  # viser's own search dies past 65535 and never returns
        with quiet_stdout():
            server = guarded_viser_server(viser, cfg.host, port, OriginPolicy(allowed=tuple(cfg.allow_origin)),
                                          share=cfg.share)
    except (ValueError, GuardError) as exc:
        raise ViewerError(str(exc)) from None
    except OSError as exc:
        raise ViewerError(f"cannot serve on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    server.scene.set_up_direction("+z")
    return server


def stop_server(server: Any) -> None:
    with quiet_stdout():
        server.stop()


def url(server: Any) -> str:
    host = server.get_host()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:  # an IPv6 address goes in brackets in a URL
        shown = f"[{shown}]"
    return f"http://{shown}:{server.get_port()}/"


def set_initial_camera(server: Any, cam: CameraPose) -> None:
    server.initial_camera.fov = cam.fov
    server.initial_camera.look_at = cam.look_at
    server.initial_camera.position = cam.position
    server.initial_camera.up = (0.0, 0.0, 1.0)


def add_splats(server: Any, arrays: SplatArrays, name: str = "/splats") -> Any:
    """Put (or replace) the splat node `name`; returns its handle."""
    return server.scene.add_gaussian_splats(name, centers=arrays.centers, covariances=arrays.covariances,
                                            rgbs=arrays.rgbs, opacities=arrays.opacities)


class SplatScene:
    """The splats on a server and the GUI readout of their count and bounds."""

    def __init__(self, server: Any, title: str) -> None:
        self.server = server
        self.title = title
        with server.gui.add_folder("Splats"):
            self.count = server.gui.add_text("Count", "0", disabled=True)
            self.lo = server.gui.add_text("Bounds min", "", disabled=True)
            self.hi = server.gui.add_text("Bounds max", "", disabled=True)
        self.handle = None

    def show(self, arrays: SplatArrays, frame_camera: bool = False) -> None:
        if frame_camera:
            set_initial_camera(self.server, framing_camera(arrays))
        self.handle = add_splats(self.server, arrays)
        b = bounds(arrays)
        self.count.value = f"{len(arrays):,}"
        self.lo.value = " ".join(f"{v:.3f}" for v in b.lo)
        self.hi.value = " ".join(f"{v:.3f}" for v in b.hi)


def _stop_on_signals() -> Optional[dict[int, Any]]:
    """Let Ctrl-C, SIGTERM (kill, systemd, docker stop) and SIGHUP end the viewer; returns the previous handlers.
    SIGINT is set explicitly too: a process started with SIGINT ignored (as background jobs of a
    script are) would otherwise never stop on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    from ..interrupts import STOP_SIGNALS

    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def _stop_within(server: Any, seconds: float = 10.0) -> None:
    """Stop the server, waiting at most `seconds` (a connection that does not close must not keep
    the command from returning; viser's threads are daemons)."""
    t = threading.Thread(target=stop_server, args=(server,), daemon=True)
    t.start()
    t.join(seconds)


def view_file(path: Path, cfg: ViewerConfig, say: Callable[[str], None],
              warn: Optional[Callable[[str], None]] = None) -> int:
    """`steinsplat view FILE`: serve until Ctrl-C; returns the number of splats shown."""
    from ..export import load_gaussians

    require_viser()  # the install hint before reading a large file
    check_config(cfg)
    g = load_gaussians(path)
    arrays = splat_arrays(g)
    if len(arrays) == 0:
        raise ViewerError(f"'{path}' holds no Gaussian with finite values: nothing to show")
    previous = _stop_on_signals()  # before the server answers: a signal from then on stops it cleanly
    server = None
    try:
        server = start_server(cfg, warn)
        scene = SplatScene(server, path.name)
        scene.show(arrays, frame_camera=True)
        say(f"viewing {path} ({scene.count.value} splats) at {url(server)}  (Ctrl-C to stop)")
        if cfg.share:
            link = server.request_share_url(verbose=False)
            say(f"public share link (anyone with it can see the scene): {link}" if link else
                "the share link could not be opened (share.viser.studio unreachable?); the local address works")
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, also while the scene was being sent
        pass
    finally:
        if server is not None:
            _stop_within(server)
        for sig, old_handler in (previous or {}).items():
            signal.signal(sig, old_handler)
    say("viewer stopped")
    return len(g)
