"""Gaussians as glTF 2.0: Khronos's `KHR_gaussian_splatting` extension, in a binary glTF named NAME.splats.glb
(a plain .glb is a mesh in steinsplat: `--mesh`).

One mesh with one point primitive (`mode` 0) holds every Gaussian; its attributes (all float32, one buffer view
each) follow the extension's "ellipse" kernel:

    POSITION                                   VEC3    the mean (min / max given, as glTF requires)
    KHR_gaussian_splatting:ROTATION            VEC4    unit quaternion x, y, z, w (glTF's order; ours is w x y z)
    KHR_gaussian_splatting:SCALE               VEC3    standard deviations, linear (ours are logs)
    KHR_gaussian_splatting:OPACITY             SCALAR  in [0, 1] (ours is a logit)
    KHR_gaussian_splatting:SH_DEGREE_0_COEF_0  VEC3    the DC coefficients, colour = 0.5 + 0.2821 c
    KHR_gaussian_splatting:SH_DEGREE_l_COEF_m  VEC3    higher degrees l = 1..3, m = 0..2l in the order of m = -l..l,
                                                       which is the 3DGS order of our shN (the same real basis and
                                                       signs, Condon-Shortley phase included)
    COLOR_0                                    VEC4    unsigned byte, normalised: the fallback colour for viewers
                                                       that draw the points (the DC colour decoded from sRGB to
                                                       linear, alpha = opacity)

The extension object says kernel "ellipse", colorSpace "srgb_rec709_display" (our renders are display sRGB),
projection "perspective", sortingMethod "cameraDistance". glTF is +Y up: our +Z-up Gaussians are rotated
(`axes.to_up(g, "y")`: means, rotations and SH exactly) and the node has no transform; the reader rotates back.

The reader takes the extension from any writer: every point primitive with it, in every node of the scene, with
the node's transform applied (a similarity keeps each Gaussian's rotation and scales; any other linear map is
applied to the covariance and decomposed again), any allowed component type (normalised integers included),
COLOR_0 in place of missing SH DC. It refuses files whose required extensions it does not know (compression).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..gaussians import MAX_SH_DEGREE, SH_C0, Gaussians
from .atomic import PathLike, atomic_write_bytes
from .axes import from_up, quat_multiply, rotmat_to_quat, sh_rotation, to_up
from .errors import ExportError, GltfError
from .glb import UNSIGNED_BYTE, BinaryBuilder, pack_glb, read_accessor, unpack_glb
from .colour import linear_to_srgb, srgb_to_linear

EXTENSION = "KHR_gaussian_splatting"
SUFFIX = ".splats.glb"  # what export_gaussians writes as glTF; any .glb is read
PREFIX = EXTENSION + ":"
SH_COEFS = (1, 3, 5, 7)  # coefficients per degree
EXTENSION_OBJECT = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection": "perspective",
                    "sortingMethod": "cameraDistance"}
MAX_NODE_DEPTH = 64  # a deeper node tree (or a cycle) is refused


def sh_semantics(degree: int) -> list[str]:
    """Attribute names of the SH coefficients beyond DC up to `degree`, in our shN order."""
    return [f"{PREFIX}SH_DEGREE_{l}_COEF_{m}" for l in range(1, degree + 1) for m in range(SH_COEFS[l])]


# ---------------------------------------------------------------------------- writing
def gltf_splats_bytes(gaussians: Gaussians, sh_degree: Optional[int] = None) -> bytes:
    """The .splats.glb file of `gaussians` (finite rows only; see the module docstring)."""
    from .. import __version__

    degree = gaussians.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ExportError(f"sh_degree must be 0..{MAX_SH_DEGREE}, got {sh_degree}")
    g = to_up(gaussians, "y")
    s = {k: v.detach().to("cpu", torch.float64).numpy() for k, v in g.splats.items()}
    n = len(g)
    k_have = s["shN"].shape[1]
    shN = np.zeros((n, (degree + 1) ** 2 - 1, 3))
    shN[:, : min(k_have, shN.shape[1])] = s["shN"][:, : shN.shape[1]]
    q = s["quats"] / np.linalg.norm(s["quats"], axis=1, keepdims=True)  # [N, 4] w x y z
    opacity = 1.0 / (1.0 + np.exp(-s["opacities"]))  # [N]
    rgb = np.clip(0.5 + SH_C0 * s["sh0"][:, 0], 0.0, 1.0)  # [N, 3] display sRGB
    rgba = np.concatenate([srgb_to_linear(rgb), opacity[:, None]], 1)  # [N, 4]
    b = BinaryBuilder()
    attributes = {
        "POSITION": b.add(s["means"], "VEC3", min_max=True),
        f"{PREFIX}ROTATION": b.add(q[:, [1, 2, 3, 0]], "VEC4"),
        f"{PREFIX}SCALE": b.add(np.exp(s["scales"]), "VEC3"),
        f"{PREFIX}OPACITY": b.add(opacity, "SCALAR"),
        f"{PREFIX}SH_DEGREE_0_COEF_0": b.add(s["sh0"][:, 0], "VEC3"),
    }
    for j, name in enumerate(sh_semantics(degree)):
        attributes[name] = b.add(shN[:, j], "VEC3")
    attributes["COLOR_0"] = b.add(np.round(rgba * 255.0), "VEC4", component=UNSIGNED_BYTE, normalized=True)
    doc = {
        "asset": {"version": "2.0", "generator": f"steinsplat {__version__}",
                  "extras": {"up": "+Y (glTF's convention; steinsplat's +Z was rotated to it)"}},
        "extensionsUsed": [EXTENSION],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "gaussians"}],
        "meshes": [{"name": "gaussians", "primitives": [{"attributes": attributes, "mode": 0,
                                                         "extensions": {EXTENSION: dict(EXTENSION_OBJECT)}}]}],
        "bufferViews": b.views,
        "accessors": b.accessors,
    }
    return pack_glb(doc, b.binary())


def write_gltf_splats(path: PathLike, gaussians: Gaussians, sh_degree: Optional[int] = None) -> int:
    """Write `gaussians` as a KHR_gaussian_splatting .splats.glb atomically; returns the number written.

    Rows with NaN/inf are left out with a warning (as for PLY); none left is an ExportError.
    """
    rows = torch.cat([t.detach().reshape(len(gaussians), -1).float() for t in gaussians.splats.values()], 1)
    keep = torch.isfinite(rows).all(1)
    if not bool(keep.all()):
        warnings.warn(f"write_gltf_splats('{path}'): dropped {int((~keep).sum())} of {len(gaussians)} Gaussians with "
                      "non-finite values (NaN or inf)", RuntimeWarning, stacklevel=2)
        s = gaussians.splats
        gaussians = Gaussians(*(s[k].detach()[keep] for k in ("means", "scales", "quats", "opacities", "sh0", "shN")))
    if len(gaussians) == 0:
        raise ExportError(f"nothing to write to '{path}': no Gaussians with finite values (the file was not written)")
    atomic_write_bytes(path, gltf_splats_bytes(gaussians, sh_degree))
    return len(gaussians)


# ---------------------------------------------------------------------------- reading
def _node_matrix(node: dict, where: str) -> np.ndarray:
    """A node's local transform [4, 4] (its `matrix`, column-major, or T * R * S)."""
    if "matrix" in node:
        m = np.asarray(node["matrix"], np.float64)
        if m.shape != (16,) or not np.isfinite(m).all():
            raise GltfError(f"{where}: a node's matrix is not 16 finite numbers; the file is corrupt")
        return m.reshape(4, 4).T
    t = np.asarray(node.get("translation", [0, 0, 0]), np.float64)
    q = np.asarray(node.get("rotation", [0, 0, 0, 1]), np.float64)  # x y z w
    sc = np.asarray(node.get("scale", [1, 1, 1]), np.float64)
    if t.shape != (3,) or q.shape != (4,) or sc.shape != (3,) or not np.isfinite(np.r_[t, q, sc]).all():
        raise GltfError(f"{where}: a node's translation / rotation / scale is malformed; the file is corrupt")
    from ..gaussians import quat_to_rotmat

    R = quat_to_rotmat(torch.as_tensor(q[[3, 0, 1, 2]])[None])[0].numpy()
    m = np.eye(4)
    m[:3, :3] = R * sc[None, :]
    m[:3, 3] = t
    return m


def _splat_nodes(doc: dict, where: str) -> list[tuple[int, np.ndarray]]:
    """(mesh index, global transform [4, 4]) of every node with a mesh in the default scene (or all roots)."""
    nodes = doc.get("nodes") or []
    scenes = doc.get("scenes") or []
    if scenes:
        k = doc.get("scene", 0)
        scene = scenes[k] if isinstance(k, int) and 0 <= k < len(scenes) else scenes[0]
        roots = scene.get("nodes", []) if isinstance(scene, dict) else []
    else:
        children = {c for n in nodes if isinstance(n, dict) for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    out: list[tuple[int, np.ndarray]] = []
    stack = [(r, np.eye(4), 0) for r in roots]
    while stack:
        i, parent, depth = stack.pop()
        if not isinstance(i, int) or not 0 <= i < len(nodes) or not isinstance(nodes[i], dict):
            raise GltfError(f"{where}: refers to node {i}, which does not exist; the file is corrupt")
        if depth > MAX_NODE_DEPTH:
            raise GltfError(f"{where}: its node tree is deeper than {MAX_NODE_DEPTH} (a cycle?); the file is corrupt")
        m = parent @ _node_matrix(nodes[i], where)
        if "mesh" in nodes[i]:
            out.append((nodes[i]["mesh"], m))
        stack.extend((c, m, depth + 1) for c in nodes[i].get("children", []))
    return out


def _transform(means, quats, scales, sh, m: np.ndarray, where: str):
    """Apply a node's global transform m [4, 4] to means [N, 3], quats [N, 4] (w x y z), scales [N, 3], sh [N, K, 3]."""
    if np.allclose(m, np.eye(4)):
        return means, quats, scales, sh
    A, t = m[:3, :3], m[:3, 3]
    means = means @ A.T + t
    u, sv, vt = np.linalg.svd(A)
    if np.linalg.det(A) <= 0 or sv.min() <= 0:
        raise GltfError(f"{where}: a splat node's transform mirrors or flattens space; splats under it are undefined "
                        "by KHR_gaussian_splatting")
    rot = u @ vt  # the rotation of the polar decomposition A = rot @ P
    sh = np.einsum("jk,nkc->njc", sh_rotation(rot, int(round(np.sqrt(sh.shape[1]))) - 1), sh)
    if np.allclose(sv, sv.mean(), rtol=1e-6):  # a similarity: rotate, scale uniformly
        q_rot = torch.as_tensor(rotmat_to_quat(rot))
        quats = quat_multiply(q_rot.expand(len(quats), 4), torch.as_tensor(quats)).numpy()
        return means, quats, scales * sv.mean(), sh
    from ..gaussians import quat_to_rotmat

    R = quat_to_rotmat(torch.as_tensor(quats)).numpy()  # [N, 3, 3]
    M = A[None] @ R * scales[:, None, :]  # [N, 3, 3] = A R S
    evals, evecs = np.linalg.eigh(M @ M.transpose(0, 2, 1))  # covariance A R S^2 R^T A^T
    evecs[np.linalg.det(evecs) < 0, :, 0] *= -1  # proper rotations
    quats = np.stack([rotmat_to_quat(e) for e in evecs])
    return means, quats, np.sqrt(np.clip(evals, 0, None)), sh


def read_gltf_splats(path: PathLike, max_splats: int = 50_000_000) -> Gaussians:
    """Load the KHR_gaussian_splatting Gaussians of a .glb as CPU float32 Gaussians in our +Z-up world.

    GltfError naming the file for anything malformed, for a file without such a primitive (a mesh?) and for
    extensions it requires that are not read here. Rows with NaN/inf are dropped with a warning.
    """
    path = Path(path)
    where = f"'{path}'"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GltfError(f"{where}: cannot open: {e.strerror or e}") from e
    doc, binary = unpack_glb(data, where)
    unknown = [e for e in doc.get("extensionsRequired", []) if e not in (EXTENSION, "KHR_mesh_quantization")]
    if unknown:
        raise GltfError(f"{where}: requires {', '.join(map(str, unknown))}, which steinsplat does not read; convert it "
                        f"to plain {EXTENSION} (e.g. splat-transform IN OUT.glb) first")
    parts = []
    for mesh_index, m in _splat_nodes(doc, where):
        meshes = doc.get("meshes") or []
        if not isinstance(mesh_index, int) or not 0 <= mesh_index < len(meshes):
            raise GltfError(f"{where}: a node refers to mesh {mesh_index}, which does not exist; the file is corrupt")
        for prim in meshes[mesh_index].get("primitives", []):
            ext = (prim.get("extensions") or {}).get(EXTENSION)
            if ext is None:
                continue
            parts.append(_read_primitive(doc, binary, prim, ext, m, where, max_splats - sum(len(p[0]) for p in parts)))
    if not parts:
        raise GltfError(f"{where}: holds no {EXTENSION} primitive (a mesh? steinsplat writes meshes as NAME.glb and "
                        f"Gaussians as NAME{SUFFIX})")
    means, quats, scales, opac, sh = (np.concatenate([p[i] for p in parts]) for i in range(5))
    keep = np.isfinite(np.concatenate([means, quats, scales, opac[:, None], sh.reshape(len(sh), -1)], 1)).all(1)
    keep &= (scales > 0).all(1) & (np.linalg.norm(quats, axis=1) > 0)
    if not keep.all():
        warnings.warn(f"read_gltf_splats({where}): dropped {int((~keep).sum())} of {len(keep)} Gaussians with "
                      "non-finite values, zero scales or zero rotations", RuntimeWarning, stacklevel=2)
    opac = np.clip(opac[keep], 1e-7, 1 - 1e-7)
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    g = Gaussians(f(means[keep]), f(np.log(scales[keep])), f(quats[keep]), f(np.log(opac / (1 - opac))),
                  f(sh[keep][:, :1]), f(sh[keep][:, 1:]))
    return from_up(g, "y")


def _read_primitive(doc: dict, binary: bytes, prim: dict, ext: dict, m: np.ndarray, where: str, max_count: int):
    """(means [N, 3], quats [N, 4] w x y z, scales [N, 3], opacities [N], sh [N, K, 3]) of one splat primitive."""
    kernel = ext.get("kernel", "ellipse")
    if kernel != "ellipse":
        raise GltfError(f"{where}: its splats use the kernel {kernel!r}; only 'ellipse' (3D Gaussians) is read")
    if ext.get("colorSpace", "srgb_rec709_display") != "srgb_rec709_display":
        warnings.warn(f"read_gltf_splats({where}): colour space {ext.get('colorSpace')!r}; read as display sRGB "
                      "(the colours may look different)", RuntimeWarning, stacklevel=3)
    if prim.get("mode", 4) != 0:
        raise GltfError(f"{where}: a {EXTENSION} primitive must have mode 0 (POINTS), it has {prim.get('mode', 4)}")
    attrs = prim.get("attributes") or {}
    need = ["POSITION", f"{PREFIX}ROTATION", f"{PREFIX}SCALE", f"{PREFIX}OPACITY"]
    missing = [a for a in need if a not in attrs]
    if missing:
        raise GltfError(f"{where}: a {EXTENSION} primitive lacks {', '.join(missing)}; the file is not valid")

    def get(name: str, width: int) -> np.ndarray:
        a = read_accessor(doc, attrs[name], binary, where, max_count)
        if a.shape[1] != width:
            raise GltfError(f"{where}: attribute {name} has {a.shape[1]} components, the extension says {width}")
        return a

    means = get("POSITION", 3)
    n = len(means)
    quats = get(f"{PREFIX}ROTATION", 4)[:, [3, 0, 1, 2]]  # x y z w -> w x y z
    scales = get(f"{PREFIX}SCALE", 3)
    opac = get(f"{PREFIX}OPACITY", 1)[:, 0]
    dc_name = f"{PREFIX}SH_DEGREE_0_COEF_0"
    if dc_name in attrs:
        dc = get(dc_name, 3)
    elif "COLOR_0" in attrs:  # drafts of the extension kept the colour only there (linear)
        c = read_accessor(doc, attrs["COLOR_0"], binary, where, max_count)[:, :3]
        dc = (linear_to_srgb(c) - 0.5) / SH_C0
    else:
        raise GltfError(f"{where}: a {EXTENSION} primitive has neither {dc_name} nor COLOR_0: no colour")
    degree = 0
    while degree < MAX_SH_DEGREE and f"{PREFIX}SH_DEGREE_{degree + 1}_COEF_0" in attrs:
        degree += 1
    rest = sh_semantics(degree)
    absent = [a for a in rest if a not in attrs]
    if absent:
        raise GltfError(f"{where}: SH degree {degree} is only partly there (no {absent[0]}); the extension forbids it")
    sh = np.stack([dc] + [get(a, 3) for a in rest], 1)  # [N, K, 3]
    if any(len(a) != n for a in (quats, scales, opac, sh)):
        raise GltfError(f"{where}: the attributes of a {EXTENSION} primitive have different counts")
    means, quats, scales, sh = _transform(means, quats, scales, sh, m, where)
    return means, quats, scales, opac, sh
