"""steinsplat's own ShapeWorld classifier/estimator blocks against the timm-built networks they replace."""

import subprocess
import sys

import pytest
import torch
from timm.layers import ConvNormAct, SelectAdaptivePool2d
from timm.models.resnet import BasicBlock
from torch import nn

from steinsplat.shapeworld.blocks import BasicBlock as OurBasicBlock
from steinsplat.shapeworld.blocks import group_norm
from steinsplat.shapeworld.classifier import ClassifierConfig, ShapeWorldClassifier
from steinsplat.shapeworld.estimator import EstimatorConfig, ShapeWorldEstimator, _FiLM


# ---------------------------------------------------------------------------- the networks as timm built them
def timm_block(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    down = None
    if stride != 1 or c_in != c_out:
        down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), group_norm(c_out))
    return BasicBlock(c_in, c_out, stride=stride, downsample=down, act_layer=nn.SiLU, norm_layer=group_norm)


class TimmClassifier(ShapeWorldClassifier):
    """The classifier's __init__ before blocks.py (timm modules); forward and the rest are inherited."""

    def __init__(self, config=None) -> None:
        nn.Module.__init__(self)
        self.config = config = config or ClassifierConfig()
        w = config.width
        chans = (w, 2 * w, 4 * w, 4 * w)
        self.stem = ConvNormAct(3, w, 3, stride=2, norm_layer=nn.GroupNorm, act_layer=nn.SiLU,
                                norm_kwargs={"num_groups": min(8, w)})
        blocks, c_in = [], w
        for i, c in enumerate(chans):
            blocks.append(timm_block(c_in, c, 1 if i == 0 else 2))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.shape_head = nn.Linear(c_in, config.num_shapes)
        self.colour_head = nn.Linear(c_in, config.num_colours)


class TimmEstimator(ShapeWorldEstimator):
    """The estimator's __init__ before blocks.py (timm modules, diffusers' DDPMScheduler)."""

    def __init__(self, config=None, alphas_cumprod=None) -> None:
        nn.Module.__init__(self)
        self.config = config = config or EstimatorConfig()
        if alphas_cumprod is None:
            from diffusers import DDPMScheduler

            from steinsplat.shapeworld.prior import scheduler_config

            alphas_cumprod = DDPMScheduler(**scheduler_config(config.num_train_timesteps)).alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().clone().float())
        w, td = config.width, config.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(2 + 16, td), nn.SiLU(), nn.Linear(td, td))
        self.stem = ConvNormAct(3, w, 3, norm_layer=nn.GroupNorm, act_layer=nn.SiLU, norm_kwargs={"num_groups": min(8, w)})
        self.enc1, self.film1 = timm_block(w, w), _FiLM(td, w)
        self.enc2, self.film2 = timm_block(w, 2 * w, 2), _FiLM(td, 2 * w)
        self.enc3, self.film3 = timm_block(2 * w, 4 * w, 2), _FiLM(td, 4 * w)
        self.mid, self.film_mid = timm_block(4 * w, 4 * w), _FiLM(td, 4 * w)
        self.dec2, self.film_d2 = timm_block(4 * w + 2 * w, 2 * w), _FiLM(td, 2 * w)
        self.dec1, self.film_d1 = timm_block(2 * w + w, w), _FiLM(td, w)
        self.head = nn.Conv2d(w, 4, 1)


def timm_twin(ours: nn.Module) -> nn.Module:
    """The timm-built network holding `ours`' weights (strict: the same names and shapes)."""
    ref = (TimmClassifier(ours.config) if isinstance(ours, ShapeWorldClassifier)
           else TimmEstimator(ours.config, alphas_cumprod=ours.alphas_cumprod))
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref.requires_grad_(False).eval()


def perturbed(m: nn.Module) -> nn.Module:
    """Random weights everywhere (GroupNorm scales/biases and the zero-initialised FiLM too)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m.requires_grad_(False).eval()


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------- classifier
@pytest.fixture(scope="module")
def classifier_pair():
    ours = ShapeWorldClassifier.from_pretrained()
    return ours, timm_twin(ours)


@pytest.mark.parametrize("shape", [(5, 64, 64, 3), (4, 3, 32, 32), (3, 3, 48, 40)])
def test_shipped_classifier_equals_timm(classifier_pair, shape):
    ours, ref = classifier_pair
    images = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))  # [B, H, W, 3] or [B, 3, H, W]
    with torch.no_grad():
        a, b = ours(images), ref(images)
    assert a.shape_logits.shape == (shape[0], 7) and a.colour_logits.shape == (shape[0], 8)
    assert torch.equal(a.shape_logits, b.shape_logits)
    assert torch.equal(a.colour_logits, b.colour_logits)


def test_random_classifier_and_its_training_gradients_equal_timm():
    ours = perturbed(ShapeWorldClassifier(ClassifierConfig(width=8)))
    ref = timm_twin(ours)
    g = torch.Generator().manual_seed(0)
    images, shapes, colours = torch.rand(6, 3, 64, 64, generator=g), torch.randint(0, 7, (6,)), torch.randint(0, 8, (6,))
    grads = []
    for m in (ours, ref):
        m.train().requires_grad_(True)
        loss = m.loss(images, shapes, colours)
        grads.append((loss.detach(), torch.autograd.grad(loss, list(m.parameters()))))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(x, y) for x, y in zip(grads[0][1], grads[1][1]))


def test_seeded_initialisation_is_timms():
    """A seeded training run starts from the same weights as with the timm blocks."""
    for ours_cls, ref_cls, cfg in ((ShapeWorldClassifier, TimmClassifier, ClassifierConfig(width=8)),
                                   (ShapeWorldEstimator, TimmEstimator, EstimatorConfig(width=8, time_dim=16))):
        torch.manual_seed(7)
        ours = ours_cls(cfg)
        torch.manual_seed(7)
        assert same_state(ours, ref_cls(cfg))


# ---------------------------------------------------------------------------- estimator
@pytest.fixture(scope="module")
def estimator_pair():
    ours = ShapeWorldEstimator.from_pretrained()
    return ours, timm_twin(ours)


@pytest.mark.parametrize("t", [None, [0, 0, 0], [1, 500, 999]])
def test_shipped_estimator_equals_timm(estimator_pair, t):
    ours, ref = estimator_pair
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)  # [B, 3, R, R]
    t = None if t is None else torch.tensor(t)
    with torch.no_grad():
        a, b = ours(x, t), ref(x, t)
    assert a.depth.shape == (3, 1, 32, 32) and a.normal.shape == (3, 3, 32, 32)
    assert torch.equal(a.depth, b.depth)
    assert torch.equal(a.normal, b.normal)


def test_shipped_estimator_input_gradient_equals_timm(estimator_pair):
    """SSD's control variate differentiates the estimator w.r.t. x_t: the same gradient bit for bit."""
    ours, ref = estimator_pair
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([250, 750])
    grads = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_(True)
        out = m(xi, t)
        grads.append(torch.autograd.grad(out.depth.square().sum() + out.normal[:, 2].sum(), xi)[0])
    assert torch.equal(grads[0], grads[1])


def test_random_estimator_equals_timm_and_default_schedule_is_diffusers():
    ours = perturbed(ShapeWorldEstimator(EstimatorConfig(resolution=16, width=8, time_dim=16)))
    ref = timm_twin(ours)
    assert torch.equal(ours.alphas_cumprod, TimmEstimator(ours.config).alphas_cumprod)  # DDPMSchedule == diffusers
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        a, b = ours(x, torch.tensor([3, 900])), ref(x, torch.tensor([3, 900]))
    assert torch.equal(a.depth, b.depth) and torch.equal(a.normal, b.normal)


def test_block_without_shortcut_for_a_shape_change_says_what_to_pass():
    with pytest.raises(ValueError, match="needs a downsample"):
        OurBasicBlock(8, 16, stride=2)


# ---------------------------------------------------------------------------- start-up
def test_loading_and_running_the_shapeworld_models_imports_no_timm_diffusers_torchvision():
    code = """
import sys, torch
from steinsplat.shapeworld.prior import ShapeWorldPrior
from steinsplat.shapeworld.classifier import ShapeWorldClassifier
from steinsplat.shapeworld.estimator import ShapeWorldEstimator
prior = ShapeWorldPrior.from_pretrained()
R = prior.resolution
with torch.no_grad():
    emb = prior.encode_text(["a red cube"])
    prior.model_output(torch.zeros(1, 3, R, R), torch.tensor([500]), emb, torch.zeros(1, prior.config.camera_dim))
    ShapeWorldClassifier.from_pretrained().classify(torch.rand(2, 64, 64, 3))
    ShapeWorldEstimator.from_pretrained()(torch.zeros(1, 3, R, R), torch.tensor([500]))
print(sorted(m for m in ("timm", "diffusers", "torchvision", "transformers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
