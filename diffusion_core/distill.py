"""Distillation: a student that draws in a few steps what its teacher draws in twenty, at any
guidance strength, in one network call per step.

Guided consistency distillation (Song et al. 2023, "Consistency Models", Algorithm 2; with the
guidance strength w as an input and the teacher's guided ODE step as the target, as in Luo et al.
2023, "Latent Consistency Models", Algorithm 1, and Meng et al. 2023, "On Distillation of Guided
Diffusion Models"). For a training picture x_0 and a pair of neighbouring timesteps t > s of an
N-point skeleton of the schedule:

    x_t   = √ᾱ_t x_0 + √(1-ᾱ_t) ε                                  (the forward process)
    ε̂_w   = ε̂(x_t, ∅) + w (ε̂(x_t, c) - ε̂(x_t, ∅))                 (the teacher, guided, two branches)
    x_s   = √ᾱ_s x̂_0 + √(1-ᾱ_s) ε̂_w                                (one DDIM step of the teacher's ODE)
    L     = d( f_θ(x_t, t, c, w),  f_θ⁻(x_s, s, c, w) )              (θ⁻: the EMA of θ, no gradient)

with f_θ the student's clean-image estimate x̂_0 and d the pseudo-Huber distance (Song & Dhariwal
2023, "Improved Techniques for Training Consistency Models", sec. 3.3), measured on x̂_0 or, with
``loss_space="v"``, on the network's own output v: Δv = Δx̂_0 / √(1-ᾱ_t), which weights the quiet
end of the path up to 14x (for a squared distance, Salimans & Ho 2022's "SNR+1" weighting). At the
last skeleton point the target is the teacher's own x̂_0 (the boundary condition f(x, 0) = x). Trained so, f maps every
point of an ODE path to the path's end, and the multistep consistency sampler
(``samplers.consistency_step``) needs only a handful of steps.

The student predicts v (Salimans & Ho 2022, sec. 4), not ε: x̂_0 = √ᾱ_t x_t - √(1-ᾱ_t) v̂ stays
well-conditioned at the noisiest step, where an ε-model's x̂_0 = (x_t - √(1-ᾱ_t) ε̂)/√ᾱ_t divides by
√ᾱ_T ≈ 5e-5 (cosine schedule). It starts from the teacher's weights, plus a zero-started embedding of w.

With ``segments`` S > 1 (multistep consistency distillation, Heek et al. 2024, "Multistep Consistency
Models", sec. 3) the skeleton is cut into S segments of N/S points, and f maps a point to the end e of its
own segment instead of to the path's end, as one DDIM step of the student: for t in a segment ending at e,

    x_e   = the EMA student's DDIM step from (x_s, s) to e            (the teacher's x_s itself when s = e)
    x̃_0   = (x_e - (σ_e/σ_t) x_t) / (α_e - (σ_e/σ_t) α_t)           (the x̂_0 whose DDIM step from x_t lands on x_e)
    L     = d( f_θ(x_t, t, c, w),  x̃_0 )

with α = √ᾱ, σ = √(1-ᾱ). Each segment is a short stretch of the ODE, so the bootstrapped target is fewer
steps from the teacher's own; the student samples by DDIM in S steps (the segments' starts are exactly
``respace(S)``). S = 1 is the objective above: e is clean data, x̃_0 = x_e = the EMA's x̂_0.

With ``objective="guidance"`` the student learns stage one of Meng et al. 2023 instead: at every noise
level (t uniform, x_t from the forward process) its one output, given w, must match the teacher's
two-branch guided prediction, as v (mean squared error; ``loss_space`` and the skeleton do not apply):

    L     = ‖ v̂_θ(x_t, t, c, w) - (√ᾱ_t ε̂_w - √(1-ᾱ_t) x̂_0(ε̂_w)) ‖²

Such a student samples with the teacher's own samplers at one network call per step instead of two, and
starts a consistency stage (``init_student``) whose guidance input already knows what w does.

With ``objective="progressive"`` the student learns stage two of Meng et al. 2023, progressive distillation
(Salimans & Ho 2022, Algorithm 2): its teacher is a student that already takes w (``init_student``, frozen),
walked in N DDIM steps; the student starts from it and learns to go in one step where it went in two. For t > m > s,
three neighbouring points of the N-step skeleton (s clean after the last):

    x_m, x_s  = two DDIM steps of the w-student from x_t                (its x̂_0 clipped, as the sampler does)
    x̃         = (x_s - (σ_s/σ_t) x_t) / (α_s - (σ_s/σ_t) α_t)           (the x̂_0 whose one DDIM step lands on x_s)
    L         = ‖ v̂_θ(x_t, t, c, w) - ṽ ‖²,  ṽ the v of x̃ at x_t       (the "SNR+1" weighting on x̂_0)

with α = √ᾱ, σ = √(1-ᾱ). The student samples in N/2 DDIM steps; its export starts the next halving.

With ``objective="dmd"`` a consistency student (``init_student``) is tuned by distribution matching
(``dmd.py``: Yin et al. 2024, DMD and DMD2): its pictures, not its paths, must match the guided teacher's,
judged by a critic trained beside it. It samples as before, by the consistency sampler.

The loop is ``train.run_optimisation``: AdamW, warm-up and cosine decay, EMA, bf16 where native,
atomic checkpoints with exact resume, DDP under torchrun, the CSV log.

    python -m diffusion_core distill --config configs/emoji32_guided.json [--max-steps N] [--resume]
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import load_dataset
from .dmd import StudentAndCritic, backward_simulation, distribution_matching_loss
from .model_card import run_recipe
from .pipeline import DiffusionPipeline
from .samplers import predict_x0_and_eps
from .schedule import NoiseSchedule
from .train import (JsonConfig, adamw_with_scaled_groups, load_training_state, run_optimisation, save_training_state,
                    start_processes, training_prompt)
from .unet import UNet, round_weights, weights_torch_dtype


OBJECTIVES = ("consistency", "guidance", "progressive", "dmd")


def sampler_fits(objective: str, sampler: str | None, segments: int = 1) -> bool:
    """Whether a student of this objective (and number of consistency segments) can sample with this sampler."""
    if objective == "guidance":
        return sampler != "consistency"
    if objective == "consistency" and segments > 1:
        return sampler == "ddim"
    return sampler == {"consistency": "consistency", "progressive": "ddim", "dmd": "consistency"}[objective]


@dataclass
class DistillConfig(JsonConfig):
    teacher: str = "checkpoints/emoji32"   # checkpoint folder or Hub id
    data: str = "emoji"                    # pictures to noise (same classes as the teacher's labels)
    objective: str = "consistency"         # "consistency" or "progressive": a few-step student; "guidance": one call per step;
                                           # "dmd": a consistency student (init_student) tuned by distribution matching
    # the consistency and progressive objectives
    skeleton_steps: int = 25               # N: the teacher's ODE is walked in N DDIM steps (progressive: N even, student N/2)
    segments: int = 1                      # consistency: S > 1 cuts the path into S segments, sampled by DDIM in S steps
    guidance_range: list[float] = field(default_factory=lambda: [1.0, 8.0])  # w ~ U[lo, hi] per picture
    guidance_lr_scale: float = 1.0         # the w embedding's lr, as a multiple of lr (it starts at zero, its signal is faint)
    dmd_noise_range: list[float] = field(default_factory=lambda: [0.02, 0.98])  # dmd: τ ~ U[lo·T, hi·T) (DMD sec. 4)
    critic_lr_scale: float = 1.0           # dmd: the critic's lr as a multiple of lr (two time-scales, DMD2 sec. 4.2)
    regression_weight: float = 0.0         # dmd: λ of the consistency loss kept beside it (DMD's regression loss, sec. 3.3)
    huber_c: float = 0.03                  # pseudo-Huber c = 0.00054·√d for d = 3·32·32 (iCT, sec. 3.3)
    loss_space: str = "x0"                 # the distance on x̂_0, or on v (Δx̂_0 weighted by 1/√(1-ᾱ_t))
    init_student: str = ""                 # a student to start from (progressive: also the teacher it halves)
    context_dropout: float = 0.1           # p of the empty condition (the teacher unguided)
    style_dropout: float = 0.3
    text_dropout: float = 0.15             # text teachers only
    # what the student's config.json says about sampling it
    default_sampling: dict = field(default_factory=dict)  # {} = consistency 4 steps w 5, DDIM N/2, or the teacher's
    # optimisation (as in TrainConfig)
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_steps: int = 2000
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.95                # θ⁻, the target network, also the exported weights (as in LCM)
    precision: str = "auto"
    seed: int = 0
    out_dir: str = "runs/emoji32_fast"
    export_dir: str = "runs/emoji32_fast/export"  # never checkpoints/ (--ship)
    weights_dtype: str = "float32"         # how exports store the weights: "float32" or "float16" (half the bytes)
    checkpoint_every: int = 100
    state_every: int = 0  # the training state alone (no export) every N steps too; 0: none
    log_every: int = 10
    num_threads: int = 0

    def validate(self) -> None:
        if len(self.guidance_range) != 2:
            raise ValueError(f"guidance_range must be [lo, hi], got {self.guidance_range!r}")
        lo, hi = self.guidance_range
        checks = [
            (self.skeleton_steps >= 2, "skeleton_steps must be >= 2"),
            (0 <= lo <= hi, "guidance_range must be [lo, hi] with 0 <= lo <= hi"),
            (self.huber_c > 0, "huber_c must be > 0"),
            (self.guidance_lr_scale > 0 and self.critic_lr_scale > 0, "guidance_lr_scale and critic_lr_scale must be > 0"),
            (self.regression_weight >= 0, "regression_weight must be >= 0"),
            (self.loss_space in ("x0", "v"), f"loss_space must be 'x0' or 'v', got {self.loss_space!r}"),
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}"),
            (self.segments == 1 or (self.objective == "consistency" and self.segments >= 2
                                    and self.skeleton_steps % self.segments == 0),
             f"segments (multistep consistency) must be 1, or, with the consistency objective, >= 2 and a divisor "
             f"of skeleton_steps ({self.skeleton_steps}), got {self.segments!r}"),
            (len(self.dmd_noise_range) == 2 and 0 <= self.dmd_noise_range[0] < self.dmd_noise_range[1] <= 1,
             f"dmd_noise_range must be [lo, hi] with 0 <= lo < hi <= 1, got {self.dmd_noise_range!r}"),
            (self.objective != "dmd" or self.init_student,
             "the dmd objective tunes a consistency student: set init_student (e.g. checkpoints/emoji32_fast)"),
            (self.objective != "progressive" or (self.init_student and self.skeleton_steps % 2 == 0),
             "the progressive objective halves a student that takes w: set init_student, and an even "
             "skeleton_steps (its steps)"),
            (not self.default_sampling or sampler_fits(self.objective, self.default_sampling.get("sampler"), self.segments),
             "default_sampling's sampler must be 'consistency' for the consistency and dmd objectives, 'ddim' for the "
             "progressive one and for consistency segments, and one of the teacher's samplers (e.g. "
             "dpmpp_2m_sde) for the guidance objective"),
            (self.batch_size >= 1 and self.max_steps >= 1 and self.lr > 0, "batch_size, max_steps and lr must be positive"),
            (all(0 <= p < 1 for p in (self.context_dropout, self.style_dropout, self.text_dropout, self.ema_decay)),
             "dropouts and ema_decay must be in [0, 1)"),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be >= 1"),
            (self.state_every >= 0, "state_every must be >= 0 (0: the state is saved at checkpoints only)"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be 'auto', 'bf16' or 'fp32'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        weights_torch_dtype(self.weights_dtype)


def student_of(teacher: DiffusionPipeline) -> UNet:
    """The teacher's network (a UNet or an MPUNet) with a guidance input, starting from the teacher's weights. A
    flip input (training augmentation only, zero when sampling) is left out: a student never sees mirrored pictures."""
    student = type(teacher.model)(**{**teacher.model._hub_mixin_config, "guidance_embedding": True,
                                     "flip_condition": False})
    weights = {k: v for k, v in teacher.model.state_dict().items() if not k.startswith("flip_embedding.")}
    missing, unexpected = student.load_state_dict(weights, strict=False)
    if unexpected or any(not k.startswith("guidance_mlp.") for k in missing):
        raise ValueError(f"teacher and student differ beyond the guidance input: {missing + unexpected}")
    return student


def start_student(teacher: DiffusionPipeline, init_student: str, sampler: str | None = None) -> UNet:
    """The student's first weights: the teacher's (``student_of``), or those of an earlier student of
    the same architecture, to continue a distillation with new settings (a fresh optimizer and step 0).
    ``sampler``: the one the earlier student must sample with (dmd tunes a consistency student)."""
    student = student_of(teacher)
    if init_student:
        earlier = DiffusionPipeline.from_pretrained(init_student)
        if not earlier.guidance_distilled or earlier.model._hub_mixin_config != student._hub_mixin_config:
            raise ValueError(f"init_student {init_student} is not a student of this teacher's architecture")
        if sampler and earlier.default_sampling.get("sampler") != sampler:
            raise ValueError(f"init_student {init_student} is not a {sampler} student (objective '{sampler}')")
        student.load_state_dict(earlier.model.state_dict())
    return student


def student_sampling(objective: str, teacher_sampling: dict, skeleton_steps: int, segments: int = 1) -> dict:
    """A student's default sampling: 4 consistency steps at w 5; DDIM in one step per segment at w 5
    (multistep consistency); DDIM in half the skeleton's steps at the teacher's w (progressive); or the
    teacher's sampler, steps and w (guidance). A guidance interval and autoguidance do not apply to a
    student that takes w as an input."""
    if objective in ("consistency", "dmd"):
        if segments > 1:
            return {"sampler": "ddim", "steps": segments, "guidance": 5.0}
        return {"sampler": "consistency", "steps": 4, "guidance": 5.0}
    if objective == "progressive":
        return {"sampler": "ddim", "steps": skeleton_steps // 2, "guidance": teacher_sampling["guidance"]}
    return {k: v for k, v in teacher_sampling.items() if k not in ("guidance_interval", "autoguidance")}


def student_optimizer(model: UNet | StudentAndCritic, cfg: DistillConfig) -> torch.optim.AdamW:
    """AdamW, the w embedding at cfg.guidance_lr_scale times the lr: zero-started, under the
    consistency objective it learns only from how the teacher's path bends with w. ``model`` is the student,
    or the student and its critic (dmd), the critic at cfg.critic_lr_scale times the lr."""
    if isinstance(model, StudentAndCritic):
        return adamw_with_scaled_groups(model, [(list(model.student.guidance_mlp.parameters()), cfg.guidance_lr_scale),
                                                (list(model.critic.parameters()), cfg.critic_lr_scale)],
                                        cfg.lr, cfg.weight_decay)
    return adamw_with_scaled_groups(model, [(list(model.guidance_mlp.parameters()), cfg.guidance_lr_scale)],
                                    cfg.lr, cfg.weight_decay)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """d(a, b) = √(‖a - b‖² + c²) - c per picture (Song & Dhariwal 2023, eq. 9), averaged."""
    return (((a - b) ** 2).flatten(1).sum(1) + c**2).sqrt().sub(c).mean()


def consistency_distance(x0: torch.Tensor, target: torch.Tensor, alpha_bar: torch.Tensor, c: float,
                         space: str = "x0") -> torch.Tensor:
    """The pseudo-Huber distance between the student's x̂_0 and its target, on x̂_0 itself or on v:
    x̂_0 = √ᾱ x_t - √(1-ᾱ) v̂ (ᾱ per picture), so Δv = Δx̂_0 / √(1-ᾱ_t)."""
    if space == "v":
        sigma = (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)
        x0, target = x0 / sigma, target / sigma
    return pseudo_huber(x0, target, c)


def x0_from_v(v: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x̂_0 = √ᾱ x_t - √(1-ᾱ) v̂ (Salimans & Ho 2022, sec. 4), ᾱ per picture."""
    a = alpha_bar.view(-1, 1, 1, 1)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


@torch.no_grad()
def guided_teacher(teacher: UNet, x_t, t, context, tokens, w, alpha_bar_t):
    """The teacher's guided prediction ε̂_w = ε̂(x_t, ∅) + w (ε̂(x_t, c) - ε̂(x_t, ∅)) (Ho & Salimans 2022,
    eq. 6) as (x̂_0, ε̂), x̂_0 clipped to the data range as the teacher's sampler does. The unconditional
    branch gets no context and no text; pictures whose condition is empty go unguided."""
    both_tokens = None if tokens is None else torch.cat([tokens, torch.zeros_like(tokens)])
    out = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, torch.zeros_like(context)]),
                  both_tokens).float()
    cond, uncond = out.chunk(2)
    eps = uncond + w.view(-1, 1, 1, 1) * (cond - uncond)
    return predict_x0_and_eps(eps, x_t, alpha_bar_t.view(-1, 1, 1, 1), "epsilon", clip_x0=True)


def skeleton_alpha_bar(alphas_cumprod: torch.Tensor, skeleton: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """ᾱ at skeleton points k (per picture); 1, clean data, one past the last point."""
    return torch.where(k >= len(skeleton), 1.0, alphas_cumprod[skeleton[k.clamp(max=len(skeleton) - 1)]])


def ddim_jump(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_s: torch.Tensor) -> torch.Tensor:
    """x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s) ε̂: a deterministic DDIM step (Song et al. 2021, eq. 12, η = 0), ᾱ_s per picture."""
    a_s = alpha_bar_s.view(-1, 1, 1, 1)
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def teacher_ode_step(teacher: UNet, x_t, t, context, tokens, w, alpha_bar_t, alpha_bar_s):
    """One DDIM step of the guided teacher from t to s; returns (x_s, x̂_0)."""
    x0, eps = guided_teacher(teacher, x_t, t, context, tokens, w, alpha_bar_t)
    return ddim_jump(x0, eps, alpha_bar_s), x0


@torch.no_grad()
def student_ode_step(student: UNet, x_t, t, context, tokens, w, alpha_bar_t, alpha_bar_s,
                     clip_x0: bool = True) -> torch.Tensor:
    """One DDIM step from t to s of a student that takes w (one call, v-prediction, x̂_0 clipped as the
    sampler clips it unless ``clip_x0`` is False)."""
    v = student(x_t, t, context, tokens, w).float()
    return ddim_jump(*predict_x0_and_eps(v, x_t, alpha_bar_t.view(-1, 1, 1, 1), "v", clip_x0=clip_x0), alpha_bar_s)


@torch.no_grad()
def segment_end_target(ema: UNet, x_t, x_s, s, context, tokens, w, alpha_bar_t, alpha_bar_s, alpha_bar_end,
                       s_is_end: torch.Tensor) -> torch.Tensor:
    """The consistency target x̃_0 (Heek et al. 2024, sec. 3): the EMA student's DDIM step from x_s to the
    segment's end e (the teacher's x_s itself where s = e), and the x̂_0 whose one DDIM step from x_t lands
    there. With e clean data it is the EMA's x̂_0 at x_s (Song et al. 2023, Algorithm 2)."""
    x_end = student_ode_step(ema, x_s, s, context, tokens, w, alpha_bar_s, alpha_bar_end, clip_x0=False)
    x_end = torch.where(s_is_end.view(-1, 1, 1, 1), x_s, x_end)
    return one_step_x0(x_t, x_end, alpha_bar_t, alpha_bar_end)


def one_step_x0(x_t: torch.Tensor, x_s: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor) -> torch.Tensor:
    """x̃ = (x_s - (σ_s/σ_t) x_t) / (α_s - (σ_s/σ_t) α_t): the x̂_0 whose one DDIM step from x_t lands on x_s
    (Salimans & Ho 2022, Algorithm 2), with α = √ᾱ, σ = √(1-ᾱ); x̃ = x_s when s is clean."""
    a_t, a_s = alpha_bar_t.view(-1, 1, 1, 1), alpha_bar_s.view(-1, 1, 1, 1)
    ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    return (x_s - ratio * x_t) / (a_s.sqrt() - ratio * a_t.sqrt())


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ ε - √(1-ᾱ) x_0 (Salimans & Ho 2022, sec. 4), ᾱ per picture."""
    a = alpha_bar.view(-1, 1, 1, 1)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def progressive_teacher(cfg: DistillConfig, device) -> UNet:
    """The student that a progressive stage halves (cfg.init_student), frozen. A student that samples by DDIM
    was trained for its own steps, so the skeleton must be those steps."""
    earlier = DiffusionPipeline.from_pretrained(cfg.init_student, device=device)
    sampling = earlier.default_sampling
    if sampling.get("sampler") == "ddim" and sampling.get("steps") != cfg.skeleton_steps:
        raise ValueError(f"init_student {cfg.init_student} samples in {sampling['steps']} DDIM steps: set "
                         f"skeleton_steps to {sampling['steps']} (its student takes half), not {cfg.skeleton_steps}")
    if sampling.get("sampler") == "consistency":
        raise ValueError(f"init_student {cfg.init_student} is a consistency student: progressive distillation "
                         "halves a student that follows the teacher's ODE (objective 'guidance' or 'progressive')")
    return earlier.model.requires_grad_(False)


def teacher_columns(teacher: DiffusionPipeline, data) -> torch.Tensor:
    """(data columns, teacher columns) 0/1 matrix: the data's class and style columns in the teacher's
    order, matched by name (styles the teacher does not know are left out)."""
    if list(data.class_names) != teacher.labels:
        raise ValueError(f"the data's classes {list(data.class_names)} are not the teacher's {teacher.labels}")
    data_columns = [*data.class_names, *(f"style:{s}" for s in data.style_names)]
    columns = [*teacher.labels, *(f"style:{s}" for s in teacher.styles)]
    mapping = torch.zeros(len(data_columns), len(columns))
    for j, name in enumerate(columns):
        if name in data_columns:
            mapping[data_columns.index(name), j] = 1.0
    return mapping


def distill(cfg: DistillConfig, resume: bool = False, show_progress: bool = True, export_only: bool = False) -> dict:
    """Distil cfg.teacher into a few-step, guidance-conditioned student (or resume); returns a summary.
    ``export_only`` writes the saved state's EMA student to cfg.export_dir without training."""
    cfg.validate()
    procs = start_processes(cfg)
    device = procs.device
    teacher = DiffusionPipeline.from_pretrained(cfg.teacher, device=device)
    if teacher.guidance_distilled:
        raise ValueError(f"{cfg.teacher} is already a distilled student; distil its teacher instead")
    if teacher.prediction_type != "epsilon":
        raise ValueError("the teacher must predict ε (prediction_type 'epsilon')")
    if not cfg.default_sampling:
        cfg.default_sampling = student_sampling(cfg.objective, teacher.default_sampling, cfg.skeleton_steps,
                                                cfg.segments)
    recipe = run_recipe(cfg, cfg.teacher, cfg.init_student) if procs.is_main else []  # every export's config.json
    walker = progressive_teacher(cfg, device) if cfg.objective == "progressive" else None
    data = load_dataset(cfg.data, teacher.model.image_size)
    images, data_contexts = data.to_tensors()
    images, contexts = images.to(device), (data_contexts @ teacher_columns(teacher, data)).to(device)
    num_classes = len(teacher.labels)
    schedule = teacher.schedule
    alphas_cumprod = schedule.alphas_cumprod.float().to(device)
    skeleton = schedule.respace(cfg.skeleton_steps).to(device)

    torch.manual_seed(cfg.seed)
    model = start_student(teacher, cfg.init_student, "consistency" if cfg.objective == "dmd" else None).to(device)
    ema = student_of(teacher).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    student = model  # what the EMA averages: the student, never the critic
    if cfg.objective == "dmd":
        sampler_timesteps = schedule.respace(int(cfg.default_sampling["steps"])).tolist()
        model = StudentAndCritic(student, copy.deepcopy(teacher.model).requires_grad_(True))  # the critic starts as the teacher
    teacher.model.requires_grad_(False)
    optimizer = student_optimizer(model, cfg)
    out_dir = Path(cfg.out_dir)
    state_path = out_dir / "state.safetensors"
    step = 0
    if export_only:
        if not state_path.exists():
            raise ValueError(f"no distillation state at {state_path} to export")
        step = load_training_state(state_path, model, ema, optimizer)
        folder = export_student(ema, teacher, cfg, step, recipe) if procs.is_main else None
        return {"step": step, "export": str(folder)}
    if resume and state_path.exists():
        step = load_training_state(state_path, model, ema, optimizer)
    elif resume and procs.is_main:
        print(f"no checkpoint at {state_path}; starting from step 0")
    shard = procs.shard(cfg.batch_size)
    lo, hi = cfg.guidance_range
    tau_lo, tau_hi = (round(f * schedule.num_timesteps) for f in cfg.dmd_noise_range)
    segment_length = cfg.skeleton_steps // cfg.segments
    if not torch.equal(schedule.respace(cfg.segments).to(device), skeleton[::segment_length]):
        raise ValueError(f"the {cfg.segments} DDIM steps the student samples in do not start its segments of the "
                         f"{cfg.skeleton_steps}-step skeleton; choose another skeleton_steps")

    def consistency_point(x0, noise, k, context, tokens, w, target_net):
        """x_t at skeleton point k, its timestep and ᾱ_t, and its consistency target: the teacher's DDIM step
        to the next point, then target_net's step to the segment's end (``segment_end_target``)."""
        t, s = skeleton[k], skeleton[(k + 1).clamp(max=cfg.skeleton_steps - 1)]
        end = (k // segment_length + 1) * segment_length  # the segment's end (N: clean data)
        a_t, a_s = alphas_cumprod[t], skeleton_alpha_bar(alphas_cumprod, skeleton, k + 1)
        a_end = skeleton_alpha_bar(alphas_cumprod, skeleton, end)
        x_t = schedule.add_noise(x0, noise, t)
        x_s, _ = teacher_ode_step(teacher.model, x_t, t, context, tokens, w, a_t, a_s)
        return x_t, t, a_t, segment_end_target(target_net, x_t, x_s, s, context, tokens, w, a_t, a_s, a_end, k + 1 == end)

    def batch_loss(step: int, net) -> torch.Tensor:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # same batches after a resume, under DDP
        n = cfg.batch_size
        batch = torch.randint(len(images), (n,), generator=g)
        k = torch.randint(cfg.skeleton_steps, (n,), generator=g)[shard].to(device)
        noise = torch.randn((n, *images.shape[1:]), generator=g)[shard].to(device)
        w = (lo + (hi - lo) * torch.rand(n, generator=g))[shard].to(device)
        keep = (torch.rand(n, generator=g) >= cfg.context_dropout)[shard].to(device)
        keep_style = (torch.rand(n, generator=g) >= cfg.style_dropout)[shard].to(device)
        keep_text = torch.rand(n, generator=g) >= cfg.text_dropout
        idx = batch[shard].to(device)
        x0, context = images[idx], contexts[idx] * keep[:, None]
        context[:, num_classes:] *= keep_style[:, None]
        tokens = None
        if teacher.vocabulary is not None:
            rng = random.Random(cfg.seed * 1_000_003 + step)
            prompts = [training_prompt(data.names[i], data.keywords[i], data.class_names[data.labels[i]], rng)
                       if kept else "" for i, kept in zip(batch.tolist(), keep_text.tolist())]
            tokens = teacher.vocabulary.encode_batch(prompts)[shard].to(device)

        if cfg.objective == "dmd":  # Yin et al. 2024: the student's pictures scored by the teacher and the critic
            i = int(torch.randint(len(sampler_timesteps), (1,), generator=g))
            noises = torch.randn((i + 1, n, *images.shape[1:]), generator=g)[:, shard].to(device)
            tau = torch.randint(tau_lo, max(tau_hi, tau_lo + 1), (n,), generator=g)[shard].to(device)
            eps = torch.randn((n, *images.shape[1:]), generator=g)[shard].to(device)
            x_t = backward_simulation(student, noises, sampler_timesteps, alphas_cumprod, context, tokens, w)
            t = torch.full((len(x_t),), sampler_timesteps[i], dtype=torch.long, device=device)
            m = len(x_t)  # the student's pictures; the consistency loss's points ride in the same forward, after them
            if cfg.regression_weight:
                x_c, t_c, a_c, target = consistency_point(x0, noise, k, context, tokens, w, ema)
                x_t, t = torch.cat([x_t, x_c]), torch.cat([t, t_c])
                context, tokens, w = (None if z is None else torch.cat([z, z]) for z in (context, tokens, w))
            a_tau = alphas_cumprod[tau]
            x_all, x_tau, eps_fake = net(x_t.contiguous(memory_format=torch.channels_last), t, context, tokens, w,
                                         alphas_cumprod[t], eps, tau, a_tau)
            x0_real, _ = guided_teacher(teacher.model, x_tau, tau, context[:m], None if tokens is None else tokens[:m],
                                        w[:m], a_tau)
            x0_fake, _ = predict_x0_and_eps(eps_fake.detach(), x_tau, a_tau.view(-1, 1, 1, 1), "epsilon", clip_x0=True)
            loss = distribution_matching_loss(x_all[:m], x0_real, x0_fake) + torch.nn.functional.mse_loss(eps_fake, eps)
            if cfg.regression_weight:
                loss = loss + cfg.regression_weight * consistency_distance(x_all[m:], target, a_c, cfg.huber_c,
                                                                           cfg.loss_space)
            return loss
        if cfg.objective == "progressive":  # Salimans & Ho 2022, Algorithm 2: one step where the teacher took two
            pair = k - k % 2  # t = skeleton[pair] -> m -> s, s clean after the last
            t, m = skeleton[pair], skeleton[pair + 1]
            a_t, a_m, a_s = (skeleton_alpha_bar(alphas_cumprod, skeleton, pair + i) for i in range(3))
            x_t = schedule.add_noise(x0, noise, t)
            x_m = student_ode_step(walker, x_t, t, context, tokens, w, a_t, a_m)
            x_s = student_ode_step(walker, x_m, m, context, tokens, w, a_m, a_s)
            x_tilde = one_step_x0(x_t, x_s, a_t, a_s)
            a = a_t.view(-1, 1, 1, 1)
            target = v_target(x_tilde, (x_t - a.sqrt() * x_tilde) / (1 - a).sqrt(), a_t)
            v = net(x_t.contiguous(memory_format=torch.channels_last), t, context, tokens, w).float()
            return torch.nn.functional.mse_loss(v, target)
        if cfg.objective == "guidance":  # Meng et al. 2023, stage one: one call gives what two guided calls give
            t = torch.randint(schedule.num_timesteps, (n,), generator=g)[shard].to(device)
            a_t = alphas_cumprod[t]
            x_t = schedule.add_noise(x0, noise, t)
            target = v_target(*guided_teacher(teacher.model, x_t, t, context, tokens, w, a_t), a_t)
            v = net(x_t.contiguous(memory_format=torch.channels_last), t, context, tokens, w).float()
            return torch.nn.functional.mse_loss(v, target)
        x_t, t, a_t, target = consistency_point(x0, noise, k, context, tokens, w, ema)
        v = net(x_t.contiguous(memory_format=torch.channels_last), t, context, tokens, w).float()
        return consistency_distance(x0_from_v(v, x_t, a_t), target, a_t, cfg.huber_c, cfg.loss_space)

    def save(step: int, with_export: bool = True) -> None:
        save_training_state(state_path, model, ema, optimizer, step, cfg)
        if with_export:
            export_student(ema, teacher, cfg, step, recipe)

    return run_optimisation(cfg, procs, model, ema, optimizer, step, batch_loss, save, show_progress, averaged=student)


def export_student(ema: UNet, teacher: DiffusionPipeline, cfg: DistillConfig, step: int,
                   recipe: list[str] | None = None) -> Path:
    """The EMA student as a checkpoint folder that ``DiffusionPipeline.from_pretrained`` loads like any
    other (config.json says it predicts v, takes w and samples by ``default_sampling``), with its
    card, the distillation log and a sample grid (8 per class at the default sampling)."""
    from .model_card import distillation_card, save_with_card, write_log_up_to
    from .viz import save_grid

    student = type(ema)(**ema._hub_mixin_config)
    student.load_state_dict({k: v.detach().float().cpu() for k, v in ema.state_dict().items()})
    round_weights(student, cfg.weights_dtype)
    pipe = DiffusionPipeline(student, NoiseSchedule(teacher.schedule.kind, teacher.schedule.num_timesteps),
                             teacher.labels, teacher.styles, "v", device="cpu", vocabulary=teacher.vocabulary,
                             default_sampling=cfg.default_sampling,
                             recipe=recipe)
    out_dir = Path(cfg.out_dir)
    per_class = 8
    grid = pipe.generate(num_images=per_class * len(pipe.labels),
                         classes=[name for name in pipe.labels for _ in range(per_class)], seed=0)
    save_grid(grid.images, out_dir / f"samples_{step:07d}.png", nrow=per_class)
    card = lambda evaluation: distillation_card(cfg, step, out_dir / "log.csv", evaluation)  # noqa: E731
    folder = save_with_card(pipe, cfg.export_dir, card, cfg.weights_dtype)
    # every export, for learning curves, with its card: a later stage started from it names its cost
    pipe.save_pretrained(out_dir / "exports" / f"step_{step:07d}", model_card=card(None), weights_dtype=cfg.weights_dtype)
    save_grid(grid.images, folder / "samples.png", nrow=per_class)
    write_log_up_to(out_dir / "log.csv", step, folder / "training_log.csv")
    return folder
