"""steinsplat's own ShapeWorld UNet and schedule against diffusers' classes they replace at run time."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from steinsplat.shapeworld.prior import PriorConfig, ShapeWorldPrior, default_assets_dir, scheduler_config, unet_config
from steinsplat.shapeworld.schedule import DDPMSchedule, ScheduleConfigError
from steinsplat.shapeworld.unet import ShapeWorldUNet, UNetConfigError


def random_pair(extra_in: int = 0, blocks=(8, 16, 16), layers=2):
    """diffusers' UNet with random weights (biases and norms perturbed too) and ours holding the same."""
    torch.manual_seed(0)
    ref = UNet2DConditionModel(**unet_config(16, blocks, layers, 12, 8, 4, extra_in)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = ShapeWorldUNet(dict(ref.config)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("size", [16, 32, 30, 18])  # 30 and 18 are not multiples of 4: explicit upsample sizes
def test_same_numbers_as_diffusers(size):
    ref, ours = random_pair(extra_in=6)
    g = torch.Generator().manual_seed(size)
    x = torch.randn(3, 9, size, size, generator=g)  # [B, 3 + 6, R, R]
    t = torch.tensor([0, 417, 999])
    c = torch.randn(3, 12, generator=g)  # [B, D]
    with torch.no_grad():
        a = ours(x, t, encoder_hidden_states=torch.zeros(3, 1, 8), class_labels=c).sample
        b = ref(x, t, encoder_hidden_states=torch.zeros(3, 1, 8), class_labels=c).sample
    assert a.shape == (3, 3, size, size)
    assert torch.equal(a, b)
    # a scalar timestep is broadcast over the batch as diffusers does
    with torch.no_grad():
        assert torch.equal(ours(x, torch.tensor(417), class_labels=c).sample,
                           ref(x, torch.tensor(417), encoder_hidden_states=torch.zeros(3, 1, 8), class_labels=c).sample)


def test_same_gradients_as_diffusers():
    ref, ours = random_pair(layers=1)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    c = torch.randn(2, 12)
    t = torch.tensor([5, 800])
    ga, = torch.autograd.grad(ours(x, t, class_labels=c).sample.square().sum(), x)
    gb, = torch.autograd.grad(ref(x, t, encoder_hidden_states=torch.zeros(2, 1, 8), class_labels=c).sample.square().sum(), x)
    assert torch.equal(ga, gb)


def test_shipped_prior_loads_into_our_classes_and_matches_diffusers():
    folder = default_assets_dir() / "prior"
    prior = ShapeWorldPrior.from_pretrained(folder)
    assert isinstance(prior.unet, ShapeWorldUNet) and isinstance(prior.scheduler, DDPMSchedule)
    ref = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True).eval()
    cfg = prior.unet.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, 32, 32, generator=g)
    c = torch.randn(2, cfg.projection_class_embeddings_input_dim, generator=g)
    with torch.no_grad():
        a = prior.unet(x, torch.tensor([100, 700]), class_labels=c).sample
        b = ref(x, torch.tensor([100, 700]), encoder_hidden_states=torch.zeros(2, 1, 8), class_labels=c).sample
    assert torch.equal(a, b)
    assert torch.equal(prior.scheduler.alphas_cumprod, DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod)
    assert prior.scheduler.config.num_train_timesteps == 1000


@pytest.mark.parametrize("rescale", [True, False])
def test_schedule_equals_diffusers(rescale):
    cfg = scheduler_config() | {"rescale_betas_zero_snr": rescale}
    ours = DDPMSchedule(cfg).alphas_cumprod
    ref = DDPMScheduler(**cfg).alphas_cumprod
    assert torch.equal(ours, ref)
    assert (ours[-1] == 0) == rescale  # zero terminal SNR only when rescaled


def test_schedule_refuses_what_it_does_not_implement():
    with pytest.raises(ScheduleConfigError, match="beta_schedule='scaled_linear'"):
        DDPMSchedule(scheduler_config() | {"beta_schedule": "scaled_linear"})


def test_unet_refuses_attention_config_naming_the_field():
    cfg = dict(unet_config()) | {"down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D")}
    with pytest.raises(UNetConfigError, match="down_block_types"):
        ShapeWorldUNet(cfg)


def test_folders_round_trip_both_ways(tmp_path):
    ref, ours = random_pair()
    ours.save_pretrained(tmp_path / "ours")
    back = UNet2DConditionModel.from_pretrained(tmp_path / "ours", use_safetensors=True).eval()  # diffusers reads ours
    ref.save_pretrained(tmp_path / "ref", safe_serialization=True)
    mine = ShapeWorldUNet.from_pretrained(tmp_path / "ref")  # and we read diffusers'
    x, c, t = torch.randn(1, 3, 16, 16), torch.randn(1, 12), torch.tensor([3])
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=torch.zeros(1, 1, 8), class_labels=c).sample
        # loaded from a file the weights may sit at another alignment, where some CPUs pick other
        # convolution kernels: equal to float32 rounding, not always to the bit
        close = dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(back(x, t, encoder_hidden_states=torch.zeros(1, 1, 8), class_labels=c).sample, want, **close)
        torch.testing.assert_close(mine(x, t, class_labels=c).sample, want, **close)
    # weights that do not fit the config are refused, not half-loaded
    cfg = json.loads((tmp_path / "ref" / "config.json").read_text())
    cfg["block_out_channels"] = [8, 16, 32]
    (tmp_path / "ref" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UNetConfigError, match="do not match"):
        ShapeWorldUNet.from_pretrained(tmp_path / "ref")


def test_tiny_trained_prior_folder_loads_through_our_classes(tmp_path):
    sw = ShapeWorldPrior.from_config(PriorConfig(resolution=16, text_dim=8), block_out_channels=(8, 16),
                                     layers_per_block=1, text_hidden_dim=8, norm_num_groups=4)
    sw.save_pretrained(tmp_path / "p")
    back = ShapeWorldPrior.from_pretrained(tmp_path / "p")
    assert isinstance(back.unet, ShapeWorldUNet)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        emb = sw.encode_text(["a red cube", "a blue torus"])  # [2, D]
    cam = torch.randn(2, sw.config.camera_dim)
    with torch.no_grad():
        assert torch.equal(back.model_output(x, torch.tensor([10, 900]), emb, cam),
                           sw.eval().model_output(x, torch.tensor([10, 900]), emb, cam))


def test_generation_path_does_not_import_diffusers():
    code = ("import sys; from steinsplat.priors.shapeworld import ShapeWorldPriorAdapter; "
            "p = ShapeWorldPriorAdapter.from_pretrained(); p.encode_prompt('a red cube'); "
            "print(sorted(m for m in ('diffusers', 'transformers', 'open3d', 'viser') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
