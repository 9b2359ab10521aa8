"""Offline views: the splats recorded as a viser scene, for playback with no Python running.

- `FILE.viser`: viser's recording format (zstd-compressed msgpack of the scene messages), played by
  viser's client at `index.html?playbackPath=FILE.viser`;
- `--html DIR`: a folder to share or put on any static host:
      DIR/index.html   viser's own built client with the scene embedded (opens by itself, even from disk)
      DIR/scene.viser  the same scene as a recording
      DIR/client.html  viser's client unchanged: client.html?playbackPath=scene.viser streams the recording
The scene is recorded from a short-lived loopback server (viser records what a server would send):
the splats, Z up, and a camera framing the object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..export.atomic import atomic_write_bytes
from ..export.errors import ExportError
from ..gaussians import Gaussians
from .server import ViewerConfig, add_splats, require_viser, set_initial_camera, start_server, stop_server
from .splats import framing_camera, splat_arrays


@dataclass
class Recording:
    """A recorded scene in both offline forms."""

    viser: bytes  # the .viser file
    html: str  # viser's client with the scene embedded (a complete HTML document)


def record_scene(g: Gaussians) -> Recording:
    arrays = splat_arrays(g)
    if len(arrays) == 0:  # as .ply and .splat refuse to write an empty file
        raise ExportError("nothing to record: no Gaussians with finite values (nothing was written)")
    server = start_server(ViewerConfig(host="127.0.0.1", port=0))
    try:
        set_initial_camera(server, framing_camera(arrays))
        add_splats(server, arrays)
        # Each serializer snapshots the scene as it is now; one serialises to bytes, one to HTML.
        as_file, as_page = server.get_scene_serializer(), server.get_scene_serializer()
        return Recording(viser=as_file.serialize(), html=as_page.as_html())
    finally:
        stop_server(server)


def client_html() -> Path:
    """viser's built web client (one self-contained HTML file shipped in its wheel)."""
    viser = require_viser()
    path = Path(viser.__file__).parent / "client" / "build" / "index.html"
    if not path.is_file():
        from .server import ViewerError

        raise ViewerError(f"viser's built client is missing ({path}); reinstall viser: pip install 'steinsplat[viewer]'")
    return path


def write_viser(path: Path, g: Gaussians) -> int:
    """Write the recording of `g` to `path` (.viser); returns the number of splats."""
    atomic_write_bytes(path, record_scene(g).viser)
    return len(splat_arrays(g))


def write_html_bundle(folder: Path, g: Gaussians) -> list[Path]:
    """Write the offline bundle (module docstring) into `folder`; returns the files written."""
    rec = record_scene(g)
    files = [folder / "index.html", folder / "scene.viser", folder / "client.html"]
    atomic_write_bytes(files[0], rec.html.encode())
    atomic_write_bytes(files[1], rec.viser)
    atomic_write_bytes(files[2], client_html().read_bytes())
    return files
