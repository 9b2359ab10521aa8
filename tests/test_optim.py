"""steinsplat.optim.Adam against torch.optim.Adam: the same numbers and the same state, without torch._dynamo."""

import subprocess
import sys

import pytest
import torch

from steinsplat.optim import Adam, adam


def run(opt_cls, steps: int = 12, **kw):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50, 3, generator=g))
    q = torch.nn.Parameter(torch.randn(7, generator=g))
    opt = opt_cls([{"params": [p], "lr": 0.05, "name": "p"}, {"params": [q], "lr": 0.01}], **kw)
    for s in range(steps):
        loss = (p.sin() * torch.arange(3.0)).square().sum() + (q.exp() * (s + 1)).sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s == 5:  # a schedule changes the rate between steps
            opt.param_groups[0]["lr"] = 0.02
    return p.detach(), q.detach(), opt


@pytest.mark.parametrize("kw", [{}, {"eps": 1e-15}, {"betas": (0.5, 0.9), "eps": 1e-6}])
def test_bit_identical_to_torch_adam_on_cpu(kw):
    p1, q1, o1 = run(Adam, **kw)
    p2, q2, o2 = run(torch.optim.Adam, **kw)
    assert torch.equal(p1, p2) and torch.equal(q1, q2)
    # the state a checkpoint stores and gsplat's strategies rewrite: the same keys, values and dtypes
    for (a, sa), (b, sb) in zip(o1.state.items(), o2.state.items()):
        assert set(sa) == set(sb) == {"step", "exp_avg", "exp_avg_sq"}
        for k in sa:
            assert torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype
    assert o1.param_groups[0]["name"] == "p" and o1.param_groups[0]["lr"] == 0.02


def test_a_parameter_without_a_gradient_is_left_alone_and_bad_settings_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adam([{"params": [p]}])
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and len(opt.state) == 0
    assert opt.state[p] == {}  # a defaultdict, as torch's: gsplat reads state[param] before the first step
    with pytest.raises(ValueError, match="betas"):
        Adam([{"params": [p]}], betas=(0.9, 1.0))


def test_adam_picks_ours_on_cpu():
    assert isinstance(adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1), Adam)


def test_a_cpu_run_never_imports_torch_dynamo():
    code = ("import sys, torch\n"
            "from steinsplat.gaussians import Gaussians\n"
            "from steinsplat.densify import per_param_optimizers\n"
            "g = Gaussians.random_ball(20, radius=0.4, opacity=0.1)\n"
            "opts = per_param_optimizers(g, {k: 1e-3 for k in g.splats})\n"
            "sum(v.sum() for v in g.splats.values()).backward()\n"
            "[o.step() for o in opts.values()]\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
