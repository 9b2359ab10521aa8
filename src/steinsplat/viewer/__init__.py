"""The browser viewer (viser, an optional extra: pip install 'steinsplat[viewer]').

    splats.py   Gaussians -> viser's arrays (centres, covariances, colours, opacities), bounds, a framing camera
    server.py   start/stop a loopback-by-default server, the splat node + count/bounds readout, `steinsplat view`
    guard.py    only the viewer's own page may open its WebSocket (Origin check), no share tunnel, the port
    live.py     the training-loop hook of `--viewer`: live splats, step/loss/variance/count, pause, snapshot PLY
    record.py   offline views: a `.viser` recording and a static folder with viser's own client
    cost.py     what `--viewer` costs a run (`python -m steinsplat.viewer.cost`)

viser itself is imported only when a server starts (`server.require_viser`), so this package imports
without it.
"""

from .live import LiveConfig, LiveViewer, start_live_viewer, stop_live_viewer, write_snapshot
from .record import write_html_bundle, write_viser
from .server import INSTALL_HINT, ViewerConfig, ViewerError, view_file
from .splats import bounds, framing_camera, splat_arrays

__all__ = [
    "INSTALL_HINT",
    "LiveConfig",
    "LiveViewer",
    "ViewerConfig",
    "ViewerError",
    "bounds",
    "framing_camera",
    "splat_arrays",
    "start_live_viewer",
    "stop_live_viewer",
    "view_file",
    "write_html_bundle",
    "write_snapshot",
    "write_viser",
]
