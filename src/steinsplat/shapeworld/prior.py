"""The ShapeWorld diffusion prior: a small pixel-space, text- and camera-conditioned diffusers UNet.

Parts (folder layout written by `save_pretrained`, read by `from_pretrained`):
    <folder>/prior_config.json                  PriorConfig (resolution, feature sizes, defaults)
    <folder>/unet/config.json + diffusion_pytorch_model.safetensors    diffusers UNet2DConditionModel
    <folder>/scheduler/scheduler_config.json    diffusers DDPMScheduler (DDIM for sampling reads the same config)
    <folder>/tokenizer/tokenizer.json           `tokenizers` WordLevel model over ShapeWorld's words
    <folder>/text_encoder/config.json + model.safetensors              ShapeWorldTextEncoder

Conditioning. The UNet has no attention at all (CPU cost, docs/architecture.md, "Facts measured on a CPU"): the prompt
and the camera enter through the class-embedding path (`class_embed_type="projection"`), i.e. a
vector c = [text embedding (D), camera features (7)] is mapped by an MLP and added to the timestep
embedding, which every ResNet block then applies as a scale/shift (`resnet_time_scale_shift=
"scale_shift"`). `encoder_hidden_states` is required by the diffusers signature but unused: a
zero tensor [B, 1, cross_attention_dim] is passed.

Diffusion (notation of DDPM / "Progressive Distillation" for v):
    x_t = alpha_t x_0 + sigma_t eps,   alpha_t = sqrt(alphabar_t),  sigma_t = sqrt(1 - alphabar_t),  eps ~ N(0, I)
    v_t = alpha_t eps - sigma_t x_0          (the UNet predicts v; diffusers `get_velocity` uses this sign)
The betas are rescaled to zero terminal SNR (alphabar_999 = 0, so x_999 is pure noise and the
training/sampling mismatch of "Common Diffusion Noise Schedules and Sample Steps are Flawed" is
gone); with v-prediction that end point stays well posed (at alpha = 0 the model predicts
v = -x_0). Sampling uses DDIM with "trailing" timestep spacing so the first step is t = 999.

Images live in [-1, 1] ("model space"), [B, 3, R, R], objects on a white (+1) background.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..cameras import Cameras
from .texture import TEXTURE_NAMES
from .vocab import COLOUR_NAMES, KNOWN_WORDS, SHAPE_NAMES, OpenPrompt, PromptError, canonical_text, parse_prompt
from .weights import default_assets_dir, save_model_folder  # default_assets_dir: also imported from here

PRIOR_CONFIG_NAME = "prior_config.json"
TEXT_ENCODER_WEIGHTS = "model.safetensors"
CONFIG_NAME = "config.json"
PAD, UNK = "[PAD]", "[UNK]"
CAMERA_FEATURES = 7  # see camera_features()


def textured_prior_dir() -> Path:
    """The shipped textured prior (fine-tuned from the default one on plain and striped objects)."""
    return default_assets_dir() / "prior-textured"


# ---------------------------------------------------------------------------- tokenizer
def vocabulary() -> list[str]:
    """Token list: [PAD], [UNK], then ShapeWorld's words in a fixed order (ids are positions). The
    texture words come last, so the first prior's ids (trained before they existed) are a prefix:
    a prior fine-tuned from it for textures (`train prior --init-from`) keeps every old id."""
    rest = sorted(KNOWN_WORDS - set(COLOUR_NAMES) - set(SHAPE_NAMES) - set(TEXTURE_NAMES))
    return [PAD, UNK, *COLOUR_NAMES, *SHAPE_NAMES, *rest, *TEXTURE_NAMES]


def build_tokenizer():
    """A `tokenizers.Tokenizer`: lower-casing, whitespace/punctuation split, WordLevel over `vocabulary()`."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


class ShapeWorldTokenizer:
    """Prompt text -> padded token ids. Every non-empty prompt is first checked against ShapeWorld's
    grammar (`parse_prompt`, which raises PromptError naming unknown words) and written in its
    canonical spelling, so "A red cube." and "a red cube" give the same ids. The empty prompt ""
    is the unconditional prompt: zero tokens."""

    def __init__(self, tokenizer, max_length: int = 12) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def tokenize(self, text: str) -> list[int]:
        if text.strip() == "":
            return []
        parsed = parse_prompt(text)  # PromptError for anything outside the grammar
        if isinstance(parsed, OpenPrompt):
            raise PromptError(f"{text!r} is an open prompt (a set of answers); the text encoder takes one answer at a "
                              "time: encode each of its modes (vocab.prompt_modes), as ShapeWorldPriorAdapter does")
        canon = canonical_text(parsed)
        ids = self.tokenizer.encode(canon).ids
        if self.unk_id in ids:  # the tokenizer file does not match vocab.py
            missing = [w for w in canon.split() if self.tokenizer.token_to_id(w) is None]
            if set(missing) <= set(TEXTURE_NAMES):
                raise PromptError(f"prompt {text!r} has a texture ({', '.join(missing)}) this prior was not trained on; "
                                  "use the textured prior (ShapeWorldPrior.from_pretrained(textured_prior_dir()), "
                                  "the regime 'textured' of steinsplat.bench.regimes)")
            raise PromptError(f"prompt {text!r} has words unknown to this tokenizer; re-save the prior with the current vocabulary")
        if len(ids) > self.max_length:
            raise PromptError(f"prompt {text!r} has {len(ids)} tokens, more than max_length={self.max_length}")
        return ids

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """ids [B, L] int64 (padded with [PAD]) and mask [B, L] bool (True on real tokens)."""
        rows = [self.tokenize(t) for t in texts]
        ids = torch.full((len(rows), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), self.max_length), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return ids, mask

    def decode(self, ids: Tensor, mask: Tensor) -> list[str]:
        return [self.tokenizer.decode([int(i) for i, m in zip(row, mrow) if m]) for row, mrow in zip(ids, mask)]

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({"max_length": self.max_length}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ShapeWorldTokenizer":
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not (folder / "tokenizer.json").exists():
            raise FileNotFoundError(f"no tokenizer.json in {folder}; train the prior (python -m steinsplat.shapeworld.train prior)")
        cfg = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() else {}
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), **cfg)


# ---------------------------------------------------------------------------- text encoder
@dataclass
class TextEncoderConfig:
    vocab_size: int = len(vocabulary())  # number of token ids (tokenizer vocabulary)
    max_length: int = 12  # longest token sequence (position embeddings)
    hidden_dim: int = 64  # token/position embedding width and per-token MLP width
    out_dim: int = 64  # size of the pooled prompt embedding fed to the UNet


class ShapeWorldTextEncoder(nn.Module):
    """Pooled prompt embedding: token + position embeddings -> per-token MLP -> masked mean -> MLP.

    Position embeddings make word order count (a room's wall colour comes before its floor colour).
    A prompt with no tokens (the unconditional prompt "") maps to a learned `null` vector.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_dim
        self.tok = nn.Embedding(config.vocab_size, h)
        self.pos = nn.Embedding(config.max_length, h)
        self.token_mlp = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))
        self.out = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, config.out_dim))
        self.null = nn.Parameter(torch.zeros(config.out_dim))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:  # ids, mask [B, L] -> [B, out_dim]
        L = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(L, device=ids.device))[None]  # [B, L, h]
        h = h + self.token_mlp(h)
        m = mask.to(h.dtype)[..., None]  # [B, L, 1]
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, h]
        out = self.out(pooled)  # [B, out_dim]
        empty = ~mask.any(1)  # [B]
        return torch.where(empty[:, None], self.null.expand_as(out), out)

    def save_pretrained(self, folder: str | Path) -> None:
        save_model_folder(folder, asdict(self.config), self, TEXT_ENCODER_WEIGHTS, CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ShapeWorldTextEncoder":
        folder = Path(folder)
        if not (folder / CONFIG_NAME).exists():
            raise FileNotFoundError(f"no text encoder config.json in {folder}")
        m = cls(TextEncoderConfig(**json.loads((folder / CONFIG_NAME).read_text())))
        m.load_state_dict(load_file(str(folder / TEXT_ENCODER_WEIGHTS)))
        return m.eval()


# ---------------------------------------------------------------------------- camera features
# Two encodings of the camera, named in PriorConfig.camera_encoding:
#   "angles" (shapeworld-1, the first shipped prior): 7 numbers (sin az, cos az, sin el, cos el,
#       (d - 1.8) / 0.2, room flag, present flag) added to the timestep embedding. Measured: that
#       prior ignored azimuth (samples at az 0 and 45 matched pixel for pixel), so shapes with
#       4-fold symmetry (cube, pyramid) came out as solids of revolution. A cube's look is a
#       90-degree-periodic function of az: from one cos/sin pair the UNet must build cos(4 az),
#       a degree-4 polynomial, through one MLP and a FiLM, and in 1,900 steps it did not.
#   "fourier-rays" (shapeworld-2): Fourier features of the angles at several frequencies
#       (sin k az, cos k az for k in azimuth_frequencies; sin/cos of el and 2 el), the distance,
#       room and present flags, added to the timestep embedding as before; and, per pixel, the
#       camera's rays as 6 Plucker channels (direction d, moment o x d, world frame) concatenated to
#       x_t at the UNet's input (as camera-conditioned multi-view diffusion models do). The moment's
#       length is the ray's distance from the origin, so "does this pixel's ray pass the object"
#       becomes a local function of the input that convolutions learn readily.
CAMERA_ENCODINGS = ("angles", "fourier-rays")
OBJECT_FOVY, ROOM_FOVY = 40.0, 60.0  # the fields of view the prior is trained at (docs/shapeworld.md)
RAY_CHANNELS = 6


def num_camera_features(encoding: str, azimuth_frequencies: Sequence[int] = (1, 2, 3, 4)) -> int:
    if encoding == "angles":
        return CAMERA_FEATURES
    if encoding == "fourier-rays":
        return 2 * len(azimuth_frequencies) + 4 + 3
    raise ValueError(f"unknown camera encoding {encoding!r}; choose one of {CAMERA_ENCODINGS}")


def camera_features_from_angles(elevation: Tensor, azimuth: Tensor, distance: Tensor, is_room: Tensor,
                                encoding: str = "angles", azimuth_frequencies: Sequence[int] = (1, 2, 3, 4)) -> Tensor:
    """Camera features [B, F] from the orbit / inside-out angles (degrees) and distance (metres).

    "angles" (F = 7): (sin az, cos az, sin el, cos el, (d - 1.8) / 0.2, room flag, present flag).
    "fourier-rays" (F = 2 K + 7): (sin k az, cos k az for the K frequencies k (k = 1 first),
        sin el, cos el, sin 2 el, cos 2 el, (d - 1.8) / 0.2, room flag, present flag).
    Objects: az/el/d of the orbit camera (d in [1.6, 2] maps to [-1, 1]). Rooms: az = yaw,
    el = pitch, the distance slot is 0. The present flag is 1 for a real camera; a dropped camera
    (classifier-free training) is all zeros.
    """
    az, el = torch.deg2rad(azimuth.float()), torch.deg2rad(elevation.float())
    room = is_room.float()
    d = torch.where(room > 0.5, torch.zeros_like(az), (torch.nan_to_num(distance.float(), nan=1.8) - 1.8) / 0.2)
    one = torch.ones_like(az)
    if encoding == "angles":
        return torch.stack([torch.sin(az), torch.cos(az), torch.sin(el), torch.cos(el), d, room, one], -1)
    num_camera_features(encoding)  # validates the name
    if len(azimuth_frequencies) == 0 or int(azimuth_frequencies[0]) != 1:
        raise ValueError("azimuth_frequencies must start with 1 (the angle is read back from that pair)")
    fourier = [f(k * az) for k in azimuth_frequencies for f in (torch.sin, torch.cos)]
    return torch.stack([*fourier, torch.sin(el), torch.cos(el), torch.sin(2 * el), torch.cos(2 * el), d, room, one], -1)


def camera_features(cameras: Cameras, encoding: str = "angles", azimuth_frequencies: Sequence[int] = (1, 2, 3, 4)) -> Tensor:
    """Camera features [B, F] of a `Cameras` batch (see `camera_features_from_angles`).

    Needs the orbit / inside-out parameters (`elevation`, `azimuth`, and `distance` for objects):
    build cameras with `orbit_cameras`, `inside_out_cameras` or the samplers.
    """
    if cameras.elevation is None or cameras.azimuth is None:
        raise ValueError("the ShapeWorld prior is conditioned on elevation/azimuth (objects) or pitch/yaw (rooms): "
                         "build the cameras with steinsplat.cameras.orbit_cameras / inside_out_cameras")
    B = len(cameras)
    dist = cameras.distance if cameras.distance is not None else torch.full((B,), float("nan"))
    is_room = torch.full((B,), 1.0 if cameras.kind == "inside_out" else 0.0)
    if cameras.kind == "custom":  # rooms are recognisable by their missing distance
        is_room = torch.isnan(dist.float()).float()
    return camera_features_from_angles(cameras.elevation.cpu(), cameras.azimuth.cpu(), dist.cpu(), is_room,
                                       encoding, azimuth_frequencies).to(cameras.device)


def plucker_rays(cameras: Cameras, resolution: int) -> Tensor:
    """Per-pixel Plucker coordinates [B, 6, R, R] of a camera batch at an R x R grid of pixel centres:
    the unit ray direction d (world frame) and the moment m = o x d, o the camera centre.

    With K scaled from (width, height) to R x R, pixel (u, v) (centres at +0.5) looks along
    d ~ R_wc K^-1 [u, v, 1]^T, R_wc = R_cw^T the camera-to-world rotation (OpenCV axes).
    """
    R = int(resolution)
    V = cameras.viewmats.float()  # [B, 4, 4] world-to-camera
    K = cameras.Ks.float().clone()  # [B, 3, 3]
    K[:, 0] *= R / cameras.width
    K[:, 1] *= R / cameras.height
    c = torch.arange(R, dtype=torch.float32, device=V.device) + 0.5
    vv, uu = torch.meshgrid(c, c, indexing="ij")  # [R, R] rows (v), columns (u)
    pix = torch.stack([uu, vv, torch.ones_like(uu)], -1).reshape(1, -1, 3)  # [1, R*R, 3]
    cam_dirs = pix @ torch.linalg.inv(K).transpose(1, 2)  # [B, R*R, 3] camera frame
    R_cw = V[:, :3, :3]  # [B, 3, 3]
    dirs = torch.nn.functional.normalize(cam_dirs @ R_cw, dim=-1)  # [B, R*R, 3] = (R_cw^T cam_dir)^T
    origin = -(R_cw.transpose(1, 2) @ V[:, :3, 3:4]).squeeze(-1)  # [B, 3] camera centre in world
    moment = torch.linalg.cross(origin[:, None].expand_as(dirs), dirs, dim=-1)  # [B, R*R, 3]
    rays = torch.cat([dirs, moment], -1)  # [B, R*R, 6]
    return rays.transpose(1, 2).reshape(-1, RAY_CHANNELS, R, R)


def rays_from_features(feats: Tensor, resolution: int) -> Tensor:
    """Plucker ray maps [B, 6, R, R] of the ShapeWorld cameras described by "fourier-rays" features
    [B, F]: az from (sin az, cos az) (slots 0, 1), el from (sin el, cos el) (the first two slots after
    the Fourier block), d from the distance slot; objects are orbit cameras at fovy 40 looking at the
    origin, rooms inside-out cameras at (0, 0, 1.2), fovy 60 (the training cameras, docs/shapeworld.md).
    A dropped camera (present flag 0) gets an all-zero ray map."""
    from ..cameras import inside_out_cameras, orbit_cameras

    f = feats.detach().float().cpu()
    n_four = f.shape[1] - 7
    az = torch.rad2deg(torch.atan2(f[:, 0], f[:, 1]))
    el = torch.rad2deg(torch.atan2(f[:, n_four], f[:, n_four + 1])).clamp(-89.9, 89.9)
    d = (1.8 + 0.2 * f[:, n_four + 4]).clamp_min(0.1)
    room, present = f[:, n_four + 5] > 0.5, f[:, n_four + 6] > 0.5
    obj = plucker_rays(orbit_cameras(el, az, d, fovy=OBJECT_FOVY, width=resolution, height=resolution), resolution)
    rays = obj
    if bool(room.any()):
        rm = plucker_rays(inside_out_cameras(az, el, fovy=ROOM_FOVY, width=resolution, height=resolution), resolution)
        rays = torch.where(room[:, None, None, None], rm, obj)
    rays = rays * present[:, None, None, None].float()
    return rays.to(feats.device)


# ---------------------------------------------------------------------------- the prior
@dataclass
class PriorConfig:
    resolution: int = 32  # image side in model space (R)
    text_dim: int = 64  # size of the pooled prompt embedding (= TextEncoderConfig.out_dim)
    camera_encoding: str = "fourier-rays"  # "fourier-rays" (Fourier features + Plucker ray channels) or "angles" (shapeworld-1)
    azimuth_frequencies: tuple[int, ...] = (1, 2, 3, 4)  # multiples k of the azimuth in sin/cos(k az) ("fourier-rays")
    camera_dim: int = -1  # size of the camera feature vector; -1: derived from the encoding
    cross_attention_dim: int = 8  # unused by the attention-free UNet, but part of its signature
    default_guidance_scale: float = 1.0  # classifier-free guidance used when none is given (1 = conditional model only)
    spec_version: str = "shapeworld-1"  # version of the world the training data follows (docs/shapeworld.md)
    training: dict = field(default_factory=dict)  # free-form record of how the weights were trained

    def __post_init__(self) -> None:
        self.azimuth_frequencies = tuple(int(k) for k in self.azimuth_frequencies)
        n = num_camera_features(self.camera_encoding, self.azimuth_frequencies)
        if self.camera_dim not in (-1, n):
            raise ValueError(f"camera_dim {self.camera_dim} does not match the {self.camera_encoding!r} encoding ({n} features)")
        self.camera_dim = n

    @property
    def ray_channels(self) -> int:
        """Extra UNet input channels carrying the per-pixel camera rays (0 for "angles")."""
        return RAY_CHANNELS if self.camera_encoding == "fourier-rays" else 0


def unet_config(
    resolution: int = 32,
    block_out_channels: Sequence[int] = (64, 128, 128),
    layers_per_block: int = 2,
    cond_dim: int = 64 + CAMERA_FEATURES,
    cross_attention_dim: int = 8,
    norm_num_groups: int = 16,
    extra_in_channels: int = 0,
) -> dict:
    """The attention-free UNet2DConditionModel config used by the prior (see the module docstring)."""
    n = len(block_out_channels)
    return dict(
        sample_size=resolution,
        in_channels=3 + extra_in_channels,
        out_channels=3,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        mid_block_type="UNetMidBlock2D",
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        cross_attention_dim=cross_attention_dim,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=cond_dim,
        resnet_time_scale_shift="scale_shift",
    )


def scheduler_config(num_train_timesteps: int = 1000) -> dict:
    """DDPMScheduler config: linear betas rescaled to zero terminal SNR, v-prediction, trailing spacing."""
    return dict(
        num_train_timesteps=num_train_timesteps,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=True,
        clip_sample_range=1.0,
    )


@dataclass
class PromptConditioning:
    """Text conditioning of a batch, as returned by `ShapeWorldPrior.encode_prompt`."""

    cond: Tensor  # [B, text_dim] embedding of the prompts
    uncond: Tensor  # [B, text_dim] embedding of the negative prompts ("" = unconditional)
    prompts: list[str]  # canonical prompt texts

    def __len__(self) -> int:
        return self.cond.shape[0]

    def repeat(self, n: int) -> "PromptConditioning":
        """Each prompt repeated n times (prompt-major), e.g. one prompt for n cameras."""
        return PromptConditioning(self.cond.repeat_interleave(n, 0), self.uncond.repeat_interleave(n, 0),
                                  [p for p in self.prompts for _ in range(n)])


class ShapeWorldPrior(nn.Module):
    """UNet + text encoder + tokenizer + noise schedule. See the module docstring for the maths."""

    def __init__(self, unet, text_encoder: ShapeWorldTextEncoder, tokenizer: ShapeWorldTokenizer, scheduler,
                 config: PriorConfig) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler  # DDPMScheduler (training); DDIM for sampling is built from its config
        self.config = config
        acp = scheduler.alphas_cumprod.detach().clone().float()  # [T] alphabar_t
        self.register_buffer("_alphas_cumprod", acp, persistent=False)

    # ------------------------------------------------------------------ construction / IO
    @classmethod
    def from_config(cls, config: Optional[PriorConfig] = None, block_out_channels: Sequence[int] = (64, 128, 128),
                    layers_per_block: int = 2, text_hidden_dim: int = 64, norm_num_groups: int = 16) -> "ShapeWorldPrior":
        """A randomly initialised prior (for training, and tiny ones for tests)."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        config = config or PriorConfig()
        unet = UNet2DConditionModel(**unet_config(
            config.resolution, block_out_channels, layers_per_block, config.text_dim + config.camera_dim,
            config.cross_attention_dim, norm_num_groups, config.ray_channels))
        text = ShapeWorldTextEncoder(TextEncoderConfig(hidden_dim=text_hidden_dim, out_dim=config.text_dim))
        tok = ShapeWorldTokenizer(build_tokenizer(), max_length=text.config.max_length)
        return cls(unet, text, tok, DDPMScheduler(**scheduler_config()), config)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        (folder / PRIOR_CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str | torch.device = "cpu") -> "ShapeWorldPrior":
        """Load a prior folder (default: the shipped `steinsplat/assets/shapeworld/prior`).

        The UNet and the schedule load into steinsplat's own classes (`shapeworld/unet.py`,
        `shapeworld/schedule.py`: the same network and numbers without importing diffusers, which costs
        more than the rest of the load); a UNet config they do not implement falls back to diffusers."""
        from .schedule import DDPMSchedule
        from .unet import ShapeWorldUNet, UNetConfigError, check_config

        folder = Path(folder) if folder is not None else default_assets_dir() / "prior"
        if not (folder / PRIOR_CONFIG_NAME).exists():
            raise FileNotFoundError(
                f"no ShapeWorld prior at {folder} ({PRIOR_CONFIG_NAME} missing); train one with "
                "`python -m steinsplat.shapeworld.train prior` or pass the folder of a trained prior")
        stored = json.loads((folder / PRIOR_CONFIG_NAME).read_text())
        stored.setdefault("camera_encoding", "angles")  # folders written before the encodings were named
        config = PriorConfig(**stored)
        try:
            check_config(json.loads((folder / "unet" / "config.json").read_text()))
            unet = ShapeWorldUNet.from_pretrained(folder / "unet")
        except UNetConfigError:
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True)
        scheduler = DDPMSchedule.from_pretrained(folder / "scheduler")
        tok = ShapeWorldTokenizer.from_pretrained(folder / "tokenizer")
        text = ShapeWorldTextEncoder.from_pretrained(folder / "text_encoder")
        prior = cls(unet, text, tok, scheduler, config).eval().to(device)
        prior.requires_grad_(False)
        return prior

    # ------------------------------------------------------------------ schedule
    @property
    def device(self) -> torch.device:
        return self._alphas_cumprod.device

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> Tensor:  # [T] alphabar_t, alpha_t = sqrt(alphabar_t), sigma_t = sqrt(1 - alphabar_t)
        return self._alphas_cumprod

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha_t, sigma_t as [B, 1, 1, 1] for integer timesteps t [B]."""
        acp = self._alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        return acp.sqrt(), (1.0 - acp).clamp_min(0.0).sqrt()

    # ------------------------------------------------------------------ conditioning
    def encode_text(self, prompts: Sequence[str]) -> Tensor:  # [B, text_dim]
        ids, mask = self.tokenizer(list(prompts))
        return self.text_encoder(ids.to(self.device), mask.to(self.device))

    def encode_prompt(self, prompts: Union[str, Sequence[str]], negative: Union[str, Sequence[str], None] = "") -> PromptConditioning:
        """Embed prompts and negative prompts (default "": the unconditional prompt).

        Unknown words raise `PromptError` (listing ShapeWorld's vocabulary). A negative prompt
        must itself be a ShapeWorld prompt or "".
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if negative is None:
            negative = ""
        neg = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if len(neg) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(neg)} negative prompts")
        canon = [canonical_text(parse_prompt(p)) for p in prompts]
        return PromptConditioning(self.encode_text(canon), self.encode_text(neg), canon)

    def camera_features(self, cameras: Union[Cameras, Tensor]) -> Tensor:  # [B, F]
        if isinstance(cameras, Tensor):
            if cameras.shape[-1] != self.config.camera_dim:
                raise ValueError(f"camera features must be [B, {self.config.camera_dim}], got {tuple(cameras.shape)}")
            return cameras.to(self.device)
        return camera_features(cameras, self.config.camera_encoding, self.config.azimuth_frequencies).to(self.device)

    def unet_input(self, x_t: Tensor, cam_feats: Tensor) -> Tensor:
        """The UNet's input sample: x_t [B, 3, R, R], with the camera's Plucker ray map [B, 6, R, R]
        appended as channels for the "fourier-rays" encoding -> [B, 3 + 6, R, R]."""
        if self.config.ray_channels == 0:
            return x_t
        rays = rays_from_features(cam_feats, x_t.shape[-1]).to(device=x_t.device, dtype=x_t.dtype)
        return torch.cat([x_t, rays], dim=1)

    # ------------------------------------------------------------------ network
    def model_output(self, x_t: Tensor, t: Tensor, text_emb: Tensor, cam_feats: Tensor) -> Tensor:
        """The raw UNet prediction (v) for x_t [B, 3, R, R], t [B], text_emb [B, D], cam_feats [B, F]."""
        B = x_t.shape[0]
        c = torch.cat([text_emb, cam_feats], dim=-1).to(x_t.dtype)  # [B, D + F]
        dummy = x_t.new_zeros(B, 1, self.config.cross_attention_dim)  # unused: no attention blocks
        t = t.to(x_t.device).expand(B) if t.dim() == 0 else t.to(x_t.device)
        sample = self.unet_input(x_t, cam_feats)  # [B, 3 (+ 6), R, R]
        return self.unet(sample, t, encoder_hidden_states=dummy, class_labels=c).sample  # [B, 3, R, R]

    @staticmethod
    def v_to_eps(v: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        """eps from a v-prediction. With x_t = alpha x_0 + sigma eps and v = alpha eps - sigma x_0:
            alpha v + sigma x_t = alpha^2 eps - alpha sigma x_0 + sigma alpha x_0 + sigma^2 eps
                                = (alpha^2 + sigma^2) eps = eps          (alpha^2 + sigma^2 = 1).
        """
        return alpha_t * v + sigma_t * x_t

    @staticmethod
    def v_to_x0(v: Tensor, x_t: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        """x_0 = alpha x_t - sigma v (same algebra as `v_to_eps`)."""
        return alpha_t * x_t - sigma_t * v

    def guided_v(self, x_t: Tensor, t: Tensor, cond: PromptConditioning, cam_feats: Tensor, guidance_scale: float) -> Tensor:
        """Classifier-free guidance in v space (equivalent to eps space, the map v -> eps being affine
        with the same x_t): v_hat = v_u + s (v_c - v_u). Both branches keep the camera; the
        unconditional one uses the negative prompt. s = 1 is the plain conditional model."""
        B = x_t.shape[0]
        t = t.expand(B) if t.dim() == 0 else t
        if guidance_scale == 1.0:
            return self.model_output(x_t, t, cond.cond, cam_feats)
        v = self.model_output(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond.uncond, cond.cond]),
                              torch.cat([cam_feats, cam_feats]))
        v_u, v_c = v.chunk(2)  # [B, 3, R, R] each
        return v_u + guidance_scale * (v_c - v_u)

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: PromptConditioning, cameras: Union[Cameras, Tensor],
                      guidance_scale: Optional[float] = None) -> Tensor:
        """Classifier-free-guided eps_hat(x_t, t, y, c) [B, 3, R, R] for x_t [B, 3, R, R] in model space
        and integer timesteps t [B] (or a scalar). The score is -eps_hat / sigma_t."""
        s = self.config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        t = torch.as_tensor(t, device=x_t.device).long()
        t = t.expand(x_t.shape[0]) if t.dim() == 0 else t
        v_hat = self.guided_v(x_t, t, cond, self.camera_features(cameras), s)  # [B, 3, R, R]
        alpha_t, sigma_t = self.alpha_sigma(t)  # [B, 1, 1, 1]
        return self.v_to_eps(v_hat, x_t, alpha_t.to(x_t.dtype), sigma_t.to(x_t.dtype))

    # ------------------------------------------------------------------ training
    def training_loss(self, x0: Tensor, text_ids: Tensor, text_mask: Tensor, cam_feats: Tensor,
                      generator: Optional[torch.Generator] = None, p_drop_text: float = 0.12,
                      p_drop_camera: float = 0.12) -> Tensor:
        """The v-prediction loss E ||v_theta(x_t, t, y, c) - v_t||^2 with condition dropout.

        x0 [B, 3, R, R] in [-1, 1]; text_ids/text_mask [B, L]; cam_feats [B, F]. With probability
        p_drop_text the prompt is replaced by the empty prompt (the text encoder's null vector), and
        independently with probability p_drop_camera the camera features are zeroed.
        """
        B = x0.shape[0]
        dev = x0.device
        text_mask, cam_feats = self.drop_conditions(text_mask, cam_feats, generator, p_drop_text, p_drop_camera)
        t = torch.randint(0, self.num_train_timesteps, (B,), generator=generator).to(dev)  # [B]
        eps = torch.randn(x0.shape, generator=generator).to(dev)  # [B, 3, R, R]
        alpha_t, sigma_t = self.alpha_sigma(t)
        x_t = alpha_t * x0 + sigma_t * eps  # forward process
        v_target = alpha_t * eps - sigma_t * x0  # velocity
        text_emb = self.text_encoder(text_ids.to(dev), text_mask.to(dev))
        v_pred = self.model_output(x_t, t, text_emb, cam_feats.to(dev))
        return F.mse_loss(v_pred, v_target)

    @staticmethod
    def drop_conditions(text_mask: Tensor, cam_feats: Tensor, generator: Optional[torch.Generator],
                        p_drop_text: float, p_drop_camera: float) -> tuple[Tensor, Tensor]:
        """Classifier-free dropout: an all-False text mask (-> null embedding) and zeroed camera features."""
        B = text_mask.shape[0]
        u = torch.rand(B, 2, generator=generator)
        drop_t = (u[:, 0] < p_drop_text).to(text_mask.device)
        drop_c = (u[:, 1] < p_drop_camera).to(cam_feats.device)
        text_mask = text_mask & ~drop_t[:, None]
        cam_feats = torch.where(drop_c[:, None], torch.zeros_like(cam_feats), cam_feats)
        return text_mask, cam_feats

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, prompts: Union[str, Sequence[str]], cameras: Union[Cameras, Tensor], steps: int = 50,
               guidance_scale: Optional[float] = None, generator: Optional[torch.Generator] = None,
               negative: Union[str, Sequence[str]] = "", eta: float = 0.0) -> Tensor:
        """DDIM samples [B, R, R, 3] in [0, 1], one per (prompt, camera) pair.

        `prompts` may be one prompt (used for every camera) or one per camera.
        """
        from diffusers import DDIMScheduler

        cam_feats = self.camera_features(cameras)  # [B, F]
        B = cam_feats.shape[0]
        prompts = [prompts] * B if isinstance(prompts, str) else list(prompts)
        if len(prompts) != B:
            raise ValueError(f"got {len(prompts)} prompts for {B} cameras; pass one prompt or one per camera")
        s = self.config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        cond = self.encode_prompt(prompts, negative)
        ddim = DDIMScheduler.from_config(self.scheduler.config)
        ddim.set_timesteps(steps, device=self.device)
        R = self.config.resolution
        x = torch.randn((B, 3, R, R), generator=generator).to(self.device)  # x_T ~ N(0, I) (zero terminal SNR)
        for t in ddim.timesteps:
            tb = torch.full((B,), int(t), device=self.device, dtype=torch.long)
            v_hat = self.guided_v(x, tb, cond, cam_feats, s)
            x = ddim.step(v_hat, t, x, eta=eta, generator=generator).prev_sample
        return ((x.clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1)  # [B, R, R, 3] in [0, 1]


# ---------------------------------------------------------------------------- image helpers
def to_model_space(rgb: Tensor, resolution: int) -> Tensor:
    """[B, H, W, 3] in [0, 1] -> [B, 3, R, R] in [-1, 1] (area down-sampling)."""
    x = rgb.permute(0, 3, 1, 2).float()
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    return x * 2.0 - 1.0


def model_space_to_rgb(x: Tensor) -> Tensor:
    """[B, 3, R, R] in [-1, 1] -> [B, R, R, 3] in [0, 1]."""
    return ((x.clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1)
