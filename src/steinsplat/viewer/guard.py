"""Who may drive a viewer: the WebSocket handshake's `Origin` check, the share tunnel, the port.

A browser lets any web page open a WebSocket to 127.0.0.1, and the page's `Origin` header is the
only thing that tells the server which page it is; viser 1.1.1 does not look at it, so a page on
any site could be served the scene and press Pause or "Save snapshot PLY". `guarded_viser_server`
builds viser's server with a handshake check in front of its own request handler:

    a handshake without Origin          accepted (not a browser: a local program, which could read the files anyway)
    Origin equal to an --allow-origin   accepted
    Origin same as the Host it asks for and naming this machine (an IP address, localhost,
    this machine's host name)           accepted: the viewer's own page
    anything else (another site, "null", a DNS name rebound to 127.0.0.1)   403

viser also opens a public share link (a tunnel through share.viser.studio) when any client asks;
steinsplat turns that off and hides the button unless the user asks for it (`share=True`).

viser binds in a thread of its own and walks up from the requested port when it is taken; past
65535 that thread dies and the constructor waits forever, so `free_port` picks the port first.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlsplit

_PATCH_LOCK = threading.Lock()  # one guarded construction at a time (the patch is module-wide while it lasts)
PORT_TRIES = 1000  # ports tried upwards from --port before giving up (viser's own limit)


class GuardError(Exception):
    """The handshake check cannot be installed in this viser version (the viewer must not start unguarded)."""


@dataclass
class OriginPolicy:
    """Which `Origin` a WebSocket handshake may come from (see the module docstring)."""

    allowed: tuple[str, ...] = ()  # extra origins accepted exactly, e.g. "http://myhost.example:8080"
    local_names: frozenset[str] = field(default_factory=lambda: machine_names())  # host names of this machine
    refused: int = 0  # handshakes refused so far (for tests and the stop message)

    def allows(self, origin: Optional[str], host_header: Optional[str]) -> bool:
        if origin is None:
            return True
        origin = origin.strip()
        if normalise_origin(origin) in {normalise_origin(a) for a in self.allowed}:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc or host_header is None:
            return False
        if parts.netloc.lower() != host_header.strip().lower():  # another page than the one this server serves
            return False
        name = (parts.hostname or "").lower()
        return is_ip_literal(name) or name in self.local_names


def normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def machine_names() -> frozenset[str]:
    """localhost and this machine's own names (a DNS name of someone else's cannot be in here)."""
    names = {"localhost"}
    for get in (socket.gethostname, socket.getfqdn):
        try:
            n = get().lower()
        except OSError:
            continue
        if n:
            names.add(n)
    return frozenset(names)


def check_origin_value(origin: str) -> str:
    """An --allow-origin value as browsers send it (`scheme://host[:port]`), or ValueError saying why not."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"--allow-origin {origin!r}: give an origin as a browser sends it, "
                         "e.g. http://myhost.example:8080 (scheme, host, port; no path)")
    return origin.strip().rstrip("/")


def _guard(inner: Optional[Callable[..., Any]], policy: OriginPolicy) -> Callable[..., Any]:
    """A websockets `process_request` that refuses foreign handshakes, then hands over to `inner`."""

    def process_request(connection: Any, request: Any) -> Any:
        headers = request.headers
        if "websocket" in headers.get("Upgrade", "").lower():
            if not policy.allows(headers.get("Origin"), headers.get("Host")):
                policy.refused += 1
                return connection.respond(HTTPStatus.FORBIDDEN, "this viewer accepts its own page only "
                                                                "(steinsplat view --allow-origin ORIGIN adds one)\n")
        return inner(connection, request) if inner is not None else None

    return process_request


@contextmanager
def _handshake_guard(policy: OriginPolicy) -> Iterator[list[int]]:
    """While the body runs, every `websockets.asyncio.server.serve` gets the origin check; yields a
    list that counts the servers so guarded (0 after the body: this viser does not serve through it)."""
    import websockets.asyncio.server as ws_server

    original = ws_server.serve
    used: list[int] = []

    def serve(*args: Any, **kwargs: Any) -> Any:
        kwargs["process_request"] = _guard(kwargs.get("process_request"), policy)
        used.append(1)
        return original(*args, **kwargs)

    with _PATCH_LOCK:
        ws_server.serve = serve  # type: ignore[assignment]
        try:
            yield used
        finally:
            ws_server.serve = original  # type: ignore[assignment]


def free_port(host: str, port: int) -> int:
    """`port` or the first free one above it (as viser would take), checked here; 0 stays 0 (the OS picks).
    OSError-free: raises ValueError with the sentence for the user when none is free."""
    if port == 0:
        return 0
    family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    last = min(65535, port + PORT_TRIES - 1)
    for p in range(port, last + 1):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server binds
            s.bind((host, p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise ValueError(f"--port {port}: that port and the ones above it up to {last} are taken on {host}; "
                     "give another --port, or --port 0 for any free one")


def guarded_viser_server(viser: Any, host: str, port: int, policy: OriginPolicy, share: bool = False) -> Any:
    """`viser.ViserServer(host, port)` whose WebSocket handshakes pass `policy`; share tunnel off unless `share`."""
    with _handshake_guard(policy) as used:
        server = viser.ViserServer(host=host, port=port, verbose=False)
    if not used:
        server.stop()
        raise GuardError(f"viser {getattr(viser, '__version__', '?')} does not serve through websockets' serve(); "
                         "steinsplat cannot check the page's origin, so the viewer is not started "
                         "(install viser 1.1.x: pip install 'viser~=1.1.1')")
    if not share:
        disable_share(server)
    return server


def disable_share(server: Any) -> None:
    """No public share link: the button is hidden and a client's request for one is ignored."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        return None

    server.request_share_url = refuse  # viser's ShareUrlRequest handler calls this attribute
    try:
        server.gui.configure_theme(show_share_button=False)
    except Exception:  # an older viser without the option: the request is refused all the same
        pass
