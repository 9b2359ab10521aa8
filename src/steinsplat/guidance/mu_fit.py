"""The fitting of SSD's mu (ssd.py step 4): per timestep bin, element-wise, from earlier steps only.

mu is element-wise (per channel by default; "pixel" = per element of x, "scalar" = one number per
CV), kept per timestep bin, and chosen to minimise E||grad||^2 with grad = w (eps_hat - sum_k mu_k ⊙ CV_k)
(the mean being fixed whatever mu, this is the variance):
    (a) "least_squares": the running optimum of the normal equations
            sum_j E[w^2 CV_i ⊙ CV_j] mu_j = E[w^2 eps_hat ⊙ CV_i]
        (for one CV: mu* = E[eps_hat ⊙ CV] / E[CV ⊙ CV]):
            1. per step, the moments A_ij = mean(w^2 CV_i CV_j), b_i = mean(w^2 eps_hat CV_i) over
               what one mu is shared by (`moments`; step 3b's noise CVs: noise_cv.NoiseFeatures.moments,
               the noise block in closed form, the baselines fitted to what the noise terms leave);
            2. per bin k, EMA of A and b with rate max(1 - ema_decay, 1 / n_k) (bias-free start);
            3. a bin is solved from its nearest bins' moments as well until `pool_updates` updates
               are pooled (`MuFit.pooled_moments`: wide early, narrow later; the optimum changes
               slowly with t);
            4. (A + lam I) mu = b + lam mu_sds, lam = ridge tr(A) / K: a ridge towards SDS's
               mu = (1, 0, ..., 0), so a poorly determined mu falls back to SDS (`MuFit.solve`);
               each bin is re-solved after each of its first updates, then every `solve_every`
               (when K > 4; with K <= 4 after every update);
    (b) "optimizer": a few Adam steps per iteration on ||grad||^2 (the paper's family only);
    (c) "fixed": mu_fixed, or SDS's (1, 0, ..., 0).
Both fits are *lagged*: the mu used at a step comes from earlier steps only (`MuFit.current`
before `MuFit.update`), so the estimator stays exactly unbiased.

State (`MuState`): the moments, update counts, solved mu and the optimizer's parameter and Adam
state per bin; `MuFit.state_tensors` / `load_state_tensors` save and restore it (keys "ssd.*").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..optim import adam
from .noise_cv import NoiseFeatures
from .ssd_config import SSDConfig


# ---------------------------------------------------------------------------- step 1: the moments
def moments(cv: Tensor, eps_hat: Tensor, w2: Tensor, granularity: str) -> tuple[Tensor, Tensor]:
    """Per-sample least-squares moments: A = mean(w^2 CV_i CV_j), b = mean(w^2 eps_hat CV_i), the mean
    taken over what one mu is shared by. cv [B, K, C, h, w], eps_hat [B, C, h, w], w2 [B, 1, 1, 1, 1]
    -> A [B, K, K, *s], b [B, K, *s] with s = (1, 1, 1) | (C, 1, 1) | (C, h, w)."""
    B, K, C, h, w = cv.shape
    wcv = w2 * cv  # [B, K, C, h, w]
    if granularity == "pixel":
        return wcv.unsqueeze(2) * cv.unsqueeze(1), (wcv * eps_hat.unsqueeze(1))
    # one batched matrix product instead of a [B, K, K, C, h, w] intermediate
    if granularity == "channel":
        a = wcv.permute(0, 2, 1, 3, 4).reshape(B * C, K, h * w)  # [B*C, K, hw]
        c = cv.permute(0, 2, 1, 3, 4).reshape(B * C, K, h * w)
        A = torch.bmm(a, c.transpose(1, 2)) / (h * w)  # [B*C, K, K]
        b = torch.bmm(a, eps_hat.reshape(B * C, h * w, 1)) / (h * w)  # [B*C, K, 1]
        return A.view(B, C, K, K).permute(0, 2, 3, 1)[..., None, None], b.view(B, C, K).permute(0, 2, 1)[..., None, None]
    if granularity == "scalar":
        a = wcv.reshape(B, K, C * h * w)
        c = cv.reshape(B, K, C * h * w)
        A = torch.bmm(a, c.transpose(1, 2)) / (C * h * w)  # [B, K, K]
        b = torch.bmm(a, eps_hat.reshape(B, C * h * w, 1)) / (C * h * w)  # [B, K, 1]
        return A[..., None, None, None], b[..., None, None]
    raise ValueError(f"unknown mu_granularity {granularity!r}: use 'scalar', 'channel' or 'pixel'")


# ---------------------------------------------------------------------------- step 4: the solve
def spd_solve(A: Tensor, b: Tensor) -> Tensor:
    """Solve A y = b for many small symmetric positive-definite systems, A [..., K, K], b [..., K].

    Gaussian elimination without pivoting (fine for SPD), in elementwise ops: for the K <= 4 of
    SSD this is far cheaper than a batched LAPACK call, whose threading overhead dominates on
    small CPUs."""
    K = A.shape[-1]
    A = A.clone()
    b = b.clone()
    for i in range(K):  # forward elimination
        piv = A[..., i, i].clamp_min(1e-30)
        for j in range(i + 1, K):
            f = A[..., j, i] / piv
            A[..., j, :] = A[..., j, :] - f[..., None] * A[..., i, :]
            b[..., j] = b[..., j] - f * b[..., i]
    y = torch.zeros_like(b)
    for i in reversed(range(K)):  # back substitution
        acc = b[..., i] - (A[..., i, i + 1 :] * y[..., i + 1 :]).sum(-1)
        y[..., i] = acc / A[..., i, i].clamp_min(1e-30)
    return y


# ---------------------------------------------------------------------------- the state
@dataclass
class MuState:
    """What the fit has learnt, per timestep bin (s = mu's shape: (1, 1, 1), (C, 1, 1) or (C, h, w))."""

    A: Tensor  # [bins, K, K, *s] EMA of E[w^2 CV_i CV_j]
    b: Tensor  # [bins, K, *s] EMA of E[w^2 eps_hat CV_i]
    n: Tensor  # [bins] long: updates per bin
    mu_table: Tensor  # least squares: [bins, K, *s] solved mu, the initial mu until a bin has data
    mu_param: torch.nn.Parameter  # optimizer mode: [bins, K, *s]
    opt: torch.optim.Optimizer  # optimizer mode: Adam on mu_param

    @property
    def mu_shape(self) -> tuple[int, ...]:
        return tuple(self.mu_table.shape[2:])


class MuFit:
    """Chooses mu for K control variates (constant first) under `config` (module docstring)."""

    def __init__(self, config: SSDConfig, K: int, num_train_timesteps: int) -> None:
        self.config = config
        self.K = K  # number of control variates
        self.num_train_timesteps = num_train_timesteps  # T: bins cut {0, ..., T - 1}
        self.state: Optional[MuState] = None  # made at the first step (mu's shape follows x's)

    # ---- bins and the initial mu
    def bins(self, t: Tensor) -> Tensor:
        """Timestep bin of each t [B] -> [B] long in {0, ..., timestep_bins - 1}."""
        nb = self.config.timestep_bins
        return (t.long() * nb // self.num_train_timesteps).clamp(0, nb - 1)

    def initial_mu(self, device: torch.device) -> Tensor:
        """[K, 1, 1, 1]: the fixed values, or (1, 0, ..., 0) = SDS (0, ..., 0 without the constant term)."""
        if self.config.mu_fixed is not None:
            if len(self.config.mu_fixed) != self.K:
                raise ValueError(f"mu_fixed needs {self.K} values (constant first, then one per baseline)")
            mu = torch.tensor([float(m) for m in self.config.mu_fixed], device=device)
        else:
            mu = torch.zeros(self.K, device=device)
            mu[0] = 1.0 if self.config.constant_term else 0.0
        return mu.view(self.K, 1, 1, 1)

    def init_state(self, x: Tensor) -> MuState:
        """A fresh state for x [B, C, h, w]: no moments, every bin at the initial mu."""
        C, h, w = x.shape[1:]
        g = self.config.mu_granularity
        if g not in ("scalar", "channel", "pixel"):
            raise ValueError(f"unknown mu_granularity {g!r}: use 'scalar', 'channel' or 'pixel'")
        shape = {"scalar": (1, 1, 1), "channel": (C, 1, 1), "pixel": (C, h, w)}[g]
        nb, K, dev = self.config.timestep_bins, self.K, x.device
        table = self.initial_mu(dev).expand(nb, K, *shape).clone()  # [bins, K, *s]
        param = torch.nn.Parameter(table.clone())
        self.state = MuState(A=torch.zeros(nb, K, K, *shape, device=dev), b=torch.zeros(nb, K, *shape, device=dev),
                             n=torch.zeros(nb, dtype=torch.long, device=dev), mu_table=table, mu_param=param,
                             opt=adam([param], lr=self.config.opt_lr))
        return self.state

    # ---- using mu
    def current(self, t: Tensor) -> Tensor:
        """mu for timesteps t [B] -> [B, K, *s] (from earlier steps only)."""
        st = self.state
        assert st is not None, "MuFit.init_state first"
        bins = self.bins(t)
        if self.config.mu_mode == "fixed":
            init = self.initial_mu(t.device).expand(self.K, *st.mu_shape)
            return init.unsqueeze(0).expand(len(t), *init.shape)
        if self.config.mu_mode == "optimizer":
            return st.mu_param.detach()[bins]
        return st.mu_table[bins]

    # ---- fitting mu
    def update(self, eps_hat: Tensor, cv: Optional[Tensor], w: Tensor, t: Tensor,
               noise: Optional[NoiseFeatures] = None, residual: Optional[Tensor] = None) -> None:
        """One step's data. eps_hat [B, C, h, w], w [B, 1, 1, 1]; the CVs either materialised, cv [B, K, C, h, w],
        or as step 3b's features `noise` followed by the baselines' cv [B, K_b, C, h, w] (or None), whose mu
        are then fitted to `residual` = eps_hat - the noise terms (noise_cv.py)."""
        st = self.state
        assert st is not None, "MuFit.init_state first"
        cfg = self.config
        bins = self.bins(t)
        w2 = (w * w).unsqueeze(1)  # [B, 1, 1, 1, 1]
        if cfg.mu_mode == "least_squares":
            if noise is None:  # step 1
                A, b = moments(cv, eps_hat, w2, cfg.mu_granularity)  # [B, K, K, *s], [B, K, *s]
            else:
                A, b = noise.moments(eps_hat, cv, w2.flatten(), residual)  # [B, K, K, C], [B, K, C]
                if cfg.mu_granularity == "scalar":
                    A, b = A.mean(-1, keepdim=True), b.mean(-1, keepdim=True)
                A, b = A[..., None, None], b[..., None, None]  # [B, K, K, *s], [B, K, *s]
            present = bins.unique()
            for k in present.tolist():  # step 2
                sel = bins == k
                st.n[k] += 1
                r = max(1.0 - cfg.ema_decay, 1.0 / int(st.n[k]))  # bias-free start
                st.A[k].mul_(1 - r).add_(A[sel].mean(0), alpha=r)
                st.b[k].mul_(1 - r).add_(b[sel].mean(0), alpha=r)
            every = 1 if self.K <= 4 else cfg.solve_every
            due = present[(st.n[present] % every == 0) | (st.n[present] <= every)]  # every update at first
            if len(due):
                self.solve(due)
        elif cfg.mu_mode == "optimizer":
            st.n[bins] += 1
            scale = float((w2.squeeze(1) * eps_hat**2).mean().clamp_min(1e-12))
            for _ in range(cfg.opt_steps):
                st.opt.zero_grad(set_to_none=True)
                mu = st.mu_param[bins]  # [B, K, *s]
                g = w * (eps_hat - (mu * cv).sum(1))  # [B, C, h, w]
                loss = (g**2).mean() / scale  # normalised ||grad||^2
                loss.backward()
                st.opt.step()

    def pooled_moments(self, ks: Tensor) -> tuple[Tensor, Tensor]:
        """Step 3: the moments bins ks [n] are solved from: a bin's own and its nearest neighbours'
        (k, k-1, k+1, k-2, ...) until their update counts, each capped at the EMA's memory
        1 / (1 - ema_decay), add up to `pool_updates`; a bin whose own count reaches it alone uses
        its own. Each bin enters scaled by 1 / tr A_j (mu is the same for (A, b) and (c A, c b), so
        this only weights the bins alike) times its capped count. A smoothing in t whose width
        adapts: wide early in a run, when every bin has seen a few steps only, narrow later (with
        the defaults, 32 against a memory of 20, a bin always shares with one or two neighbours).
        The optimal filter changes slowly with t, so neighbours' data make a better fit than none.
        -> A [n, K, K, *s], b [n, K, *s]."""
        st = self.state
        assert st is not None, "MuFit.init_state first"
        cfg = self.config
        nb = st.n.shape[0]
        cap = 1.0 / (1.0 - cfg.ema_decay)
        counts = st.n.float().clamp(max=cap)  # [bins]
        traces = st.A.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30)  # [bins, *s] tr A_j, once
        A_out, b_out = [], []
        for k in ks.tolist():
            order = sorted(range(nb), key=lambda j: (abs(j - k), j))
            chosen, total = [], 0.0
            for j in order:
                if total >= cfg.pool_updates:
                    break
                if counts[j] > 0:
                    chosen.append(j)
                    total += float(counts[j])
            if chosen == [k] or not chosen:
                A_out.append(st.A[k])
                b_out.append(st.b[k])
                continue
            A_acc, b_acc = torch.zeros_like(st.A[k]), torch.zeros_like(st.b[k])
            for j in chosen:
                c = float(counts[j]) / traces[j]  # [*s]
                A_acc += c * st.A[j]
                b_acc += c * st.b[j]
            A_out.append(A_acc)
            b_out.append(b_acc)
        return torch.stack(A_out), torch.stack(b_out)

    def solve(self, ks: Tensor) -> None:
        """Step 4 for bins ks [n]: sum_j A_ij mu_j = b_i per element, ridge relative to the trace
        (one batched solve per step); writes mu_table[ks]."""
        st = self.state
        assert st is not None, "MuFit.init_state first"
        K = self.K
        A_pool, b_pool = self.pooled_moments(ks) if self.config.pool_updates > 0 else (st.A[ks], st.b[ks])
        A_ = A_pool.movedim(1, -1).movedim(1, -1)  # [n, *s, K, K]
        b_ = b_pool.movedim(1, -1).unsqueeze(-1)  # [n, *s, K, 1]
        tr = A_.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]  # [n, *s, 1, 1]
        lam = self.config.ridge * tr / K + 1e-12
        # ridge towards SDS's mu = (1, 0, ..., 0), not towards 0: (A + lam I) mu = b + lam mu_sds,
        # so a poorly determined mu falls back to SDS instead of shrinking the constant term.
        mu_sds = self.initial_mu(A_.device).view(K)
        A_ = A_ + lam * torch.eye(K, device=A_.device)
        rhs = b_.squeeze(-1) + lam.squeeze(-1) * mu_sds
        if K <= 4:
            mu = spd_solve(A_, rhs)  # [n, *s, K]
        else:  # the shifted-noise CVs: hundreds of unknowns, LAPACK's Cholesky pays off
            L, info = torch.linalg.cholesky_ex(A_.double())
            if bool((info != 0).any()):  # not positive definite (should not happen with the ridge): keep the old mu
                return
            mu = torch.cholesky_solve(rhs.double().unsqueeze(-1), L).squeeze(-1).to(A_.dtype)
        st.mu_table[ks] = mu.movedim(-1, 1)  # [n, K, *s]

    # ---- checkpoints
    def state_tensors(self) -> dict[str, Tensor]:
        """The state as named tensors ({} before the first step)."""
        st = self.state
        if st is None:
            return {}
        t = {"ssd.A": st.A, "ssd.b": st.b, "ssd.n": st.n, "ssd.mu_table": st.mu_table, "ssd.mu_param": st.mu_param.detach()}
        for k, v in st.opt.state.get(st.mu_param, {}).items():
            t[f"ssd.opt.{k}"] = torch.as_tensor(v)
        return t

    def load_state_tensors(self, tensors: dict[str, Tensor], device: torch.device | str) -> None:
        """Restore what `state_tensors` saved (nothing when it saved nothing), onto `device`."""
        if "ssd.mu_table" not in tensors:
            return
        table = tensors["ssd.mu_table"]
        if table.shape[:2] != (self.config.timestep_bins, self.K):
            raise ValueError(f"saved SSD state has {tuple(table.shape[:2])} (bins, control variates), this SSD has "
                             f"({self.config.timestep_bins}, {self.K}): use the same baselines and timestep_bins")
        param = torch.nn.Parameter(tensors["ssd.mu_param"].to(device).clone())
        opt = adam([param], lr=self.config.opt_lr)
        saved = {k[len("ssd.opt."):]: v.to(device).clone() for k, v in tensors.items() if k.startswith("ssd.opt.")}
        if saved:
            opt.state[param] = saved
        self.state = MuState(A=tensors["ssd.A"].to(device).clone(), b=tensors["ssd.b"].to(device).clone(),
                             n=tensors["ssd.n"].to(device).clone(), mu_table=table.to(device).clone(),
                             mu_param=param, opt=opt)
