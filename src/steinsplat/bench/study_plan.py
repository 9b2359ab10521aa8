"""The SSD convergence study's plan: its settings (StudyConfig), one run's settings (Task) and record
(Result), and the protocol's tasks; study.py runs them, study_stats.py reports on them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


TUNE_PROMPTS = ("a red cube", "a gray pyramid", "a yellow cylinder", "a green torus")
# held out from the tuning; the first six are also the pairs the prior never saw
EVAL_PROMPTS = ("a purple cube", "a green pyramid", "an orange cone", "a cyan torus", "a blue sphere",
                "a yellow capsule", "a blue cylinder", "a red cone")
METRIC_KEYS = ("iou_3d", "chamfer_mm", "top_iou", "low_iou", "mask_iou", "colour_error", "r_precision")
SET_KEYS = ("mode", "purity", "view_purity", "pixel_purity")  # of set_metrics.SetMetrics (set_metrics.mode_diversity reads them)


@dataclass
class StudyConfig:
    """The SSD convergence study: oracle views, tuned learning rates, budgets, bootstrap intervals."""

    out: Path = Path("docs/bench/study")  # folder of the raw runs (runs/*.json, reused) and report.json / report.md
    methods: tuple[str, ...] = ("sds", "ssd-filter")  # estimators compared (sds first: the reference); any of steinsplat bench's methods
    budgets: tuple[int, ...] = (25, 50, 100, 200, 400)  # step budgets (each the whole schedule); 25 and 50: a tuned 100-step run is already within 1 % of 400 steps
    lr_mults: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # learning-rate multipliers tried in the tuning (every rate scaled); x0.5 (stored runs) was never the best
    tune_prompts: tuple[str, ...] = TUNE_PROMPTS  # prompts of the oracle and the tuning
    tune_seeds: tuple[int, ...] = (0,)  # seeds of the oracle and the tuning
    eval_prompts: tuple[str, ...] = EVAL_PROMPTS  # held-out prompts, evaluated once at the tuned settings
    eval_seeds: tuple[int, ...] = (0, 1, 2)  # seeds of the evaluation
    views: int = 4  # cameras per step (generation's default)
    oracle_views: int = 8  # views per step of the oracle (SDS at the default learning rate); 0: skip the oracle
    view_options: tuple[int, ...] = (2, 8)  # views per step also tried at each method's tuned multiplier, against `views` at about the same time; empty: skip
    resolution: int = 64  # render size
    jobs: int = 2  # worker processes (one thread each)
    max_minutes: float = 115.0  # start no new run after this many minutes (the report covers what exists)
    bootstrap: int = 2000  # bootstrap resamples of (prompt, seed) for the intervals
    gap: float = 0.9  # share of the gap between the initial and the best result that counts as reached
    sds_gap: float = 0.95  # the time ratio to SDS is taken at this share of SDS's gain (initial -> SDS at the largest budget)
    eval_fractions: tuple[float, ...] = (0.25, 0.5)  # the evaluation runs are also evaluated at these fractions of their steps (one evaluation each); empty: the end only
    run: bool = True  # run what is missing (--no-run: only write the report from the stored runs)
    probe_steps: int = 40  # steps of each cost-probe run (every method x views side by side, see above); 0: use the runs' own times
    report_name: str = "report"  # the report's files OUT/NAME.md and OUT/NAME.json (a study of other methods can share OUT's runs and keep the main report)
    quick: bool = False  # CI mode: 2 + 2 prompts, budgets 6 and 12 at 32 px, 2 views (structure, not numbers)


def quick_config(cfg: StudyConfig) -> StudyConfig:
    return dataclasses.replace(cfg, budgets=(6, 12), lr_mults=(1.0, 2.0), tune_prompts=("a red cube", "a gray pyramid"),
                               eval_prompts=("a blue sphere", "a green cube"), eval_seeds=(0, 1), views=2, oracle_views=4, view_options=(4,), probe_steps=4,
                               resolution=32, bootstrap=200, eval_fractions=(0.5,))


@dataclass(frozen=True)
class Task:
    """One run: its settings name its file (so a stored run is found again by any later invocation)."""

    method: str
    prompt: str
    seed: int
    steps: int  # 0: the initial state (no optimisation)
    lr_mult: float
    views: int
    resolution: int
    profile: bool = False  # also record where a step's time goes
    evals: tuple[float, ...] = ()  # also evaluate at these fractions of the steps (the trajectory; not part of the key)

    def __post_init__(self) -> None:
        object.__setattr__(self, "evals", tuple(float(f) for f in self.evals))  # JSON gives a list

    def eval_steps(self) -> list[int]:
        """The steps strictly inside the run at which `evals` asks for an evaluation."""
        return sorted({round(f * self.steps) for f in self.evals} & set(range(1, self.steps)))

    def key(self) -> str:
        from ..naming import slugify

        if self.steps == 0:
            return f"init--{slugify(self.prompt)}--seed{self.seed}"
        return (f"{self.method}--{slugify(self.prompt)}--seed{self.seed}--{self.steps}steps--lr{self.lr_mult:g}"
                f"--{self.views}views-{self.resolution}px")


@dataclass
class Result:
    task: dict  # the Task's fields
    metrics: dict  # METRIC_KEYS -> value (None where not defined)
    seconds: float  # optimisation wall time (evaluation excluded)
    seconds_per_step: float  # median
    gaussians: int
    skipped_steps: int
    profile: Optional[dict]  # {"prior": s, "render": s, "rest": s} summed over the run (profiled runs only)
    code: str  # fingerprint of steinsplat's source that made the run
    date: str
    trajectory: Optional[list] = None  # [{"step", "seconds", "metrics"}] at the task's eval_steps (None: runs from before)
    guard: Optional[dict] = None  # SSD: Guard.summary() at the end (share of views served the fit, in-run second-moment ratios)

    @property
    def key(self) -> str:
        return Task(**self.task).key()


# ---------------------------------------------------------------------------- the protocol's tasks
def init_tasks(cfg: StudyConfig) -> list[Task]:
    units = [(p, s) for p in cfg.tune_prompts for s in cfg.tune_seeds] + [(p, s) for p in cfg.eval_prompts for s in cfg.eval_seeds]
    return [Task("init", p, s, 0, 1.0, cfg.views, cfg.resolution) for p, s in units]


def oracle_tasks(cfg: StudyConfig) -> list[Task]:
    if cfg.oracle_views <= 0:
        return []
    out = []
    for S in cfg.budgets:
        for i, p in enumerate(cfg.tune_prompts):
            for s in cfg.tune_seeds:
                for v in (cfg.views, cfg.oracle_views):
                    prof = i == 0 and s == cfg.tune_seeds[0] and S == cfg.budgets[0]
                    out.append(Task("sds", p, s, S, 1.0, v, cfg.resolution, profile=prof))
    return out


def tune_tasks(cfg: StudyConfig) -> list[Task]:
    return [Task(m, p, s, S, lr, cfg.views, cfg.resolution) for m in cfg.methods for S in cfg.budgets
            for lr in cfg.lr_mults for p in cfg.tune_prompts for s in cfg.tune_seeds]


def views_partner(cfg: StudyConfig, steps: int, views: int) -> Optional[int]:
    """The budget at `cfg.views` views per step with as many rendered views in all as `steps` steps at
    `views` views (about the same time: the cost probe measured an 8-view step at 2.4x a 4-view one
    and a 2-view step at 0.6x, and the report shows both times), or None if that is not a budget."""
    T = steps * views / cfg.views
    return int(T) if T == int(T) and int(T) in cfg.budgets else None


def views_tasks(cfg: StudyConfig, tuned: dict[tuple[str, int], float]) -> list[Task]:
    """Every method at V views per step and its tuned multiplier, on the tuning prompts, at the budgets
    that have a partner at `cfg.views` views (`views_partner`)."""
    return [Task(m, p, s, S, tuned[m, S], V, cfg.resolution) for m in cfg.methods for V in cfg.view_options
            for S in cfg.budgets if (m, S) in tuned and views_partner(cfg, S, V) is not None
            for p in cfg.tune_prompts for s in cfg.tune_seeds]


def eval_tasks(cfg: StudyConfig, tuned: dict[tuple[str, int], float]) -> list[Task]:
    """Seed-major (then prompt), so that a run cut short by --max-minutes leaves whole units missing."""
    return [Task(m, p, s, S, tuned[m, S], cfg.views, cfg.resolution, evals=cfg.eval_fractions) for s in cfg.eval_seeds
            for p in cfg.eval_prompts for m in cfg.methods for S in cfg.budgets if (m, S) in tuned]
