"""Distribution matching distillation: the student's gradient is the difference of the two scores, the
critic learns only from its own loss, training sees what the sampler makes, and the tuned student ships
like any other consistency student."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffusion_core.__main__ import main
from diffusion_core.distill import distill, student_of
from diffusion_core.dmd import StudentAndCritic, backward_simulation, distribution_matching_loss
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.samplers import sample

from conftest import tiny_distill_config


def test_the_students_gradient_is_the_normalised_difference_of_the_two_scores():
    torch.manual_seed(0)
    x0 = torch.randn(3, 3, 4, 4, requires_grad=True)
    real, fake = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    distribution_matching_loss(x0, real, fake).backward()
    scale = (x0.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(x0.grad * x0.numel(), (fake - real) / scale, atol=1e-5)
    x0.grad = None
    distribution_matching_loss(x0, real, real).backward()  # the critic agrees with the teacher: nothing to learn
    assert torch.equal(x0.grad, torch.zeros_like(x0))


def test_each_network_learns_only_from_its_own_loss(teacher_dir):
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    pair = StudentAndCritic(student_of(teacher), teacher.model.requires_grad_(True))
    torch.manual_seed(0)
    x_t, t, tau, c, w = torch.randn(2, 3, 16, 16), torch.tensor([40, 40]), torch.tensor([10, 30]), torch.eye(5)[:2], torch.ones(2)
    abar = teacher.schedule.alphas_cumprod.float()
    noise = torch.randn(2, 3, 16, 16)
    for loss_of, learner, bystander in ((lambda x0, eps: x0.square().mean(), pair.student, pair.critic),
                                        (lambda x0, eps: eps.square().mean(), pair.critic, pair.student)):
        pair.zero_grad(set_to_none=True)
        x0, x_tau, eps_fake = pair(x_t, t, c, None, w, abar[t], noise, tau, abar[tau])
        loss_of(x0, eps_fake).backward()
        assert all(p.grad is None or not p.grad.any() for p in bystander.parameters())
        assert any(p.grad is not None and p.grad.any() for p in learner.parameters())
    a = abar[tau].view(-1, 1, 1, 1)
    assert torch.allclose(x_tau, a.sqrt() * x0.detach() + (1 - a).sqrt() * noise)  # the forward process


def test_training_inputs_are_what_the_consistency_sampler_makes(teacher_dir):
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    student = student_of(teacher).eval()
    for p in student.guidance_mlp.parameters():
        torch.nn.init.normal_(p, std=0.1)
    c, w = torch.eye(5)[:2], torch.full((2,), 3.0)
    seen = []
    sample(lambda x, t, ctx: student(x, t, ctx, None, w), teacher.schedule, (2, 3, 16, 16), sampler="consistency",
           steps=4, context=c, prediction_type="v", clip_x0=True, seed=3, callback=seen.append)
    timesteps = [s.t for s in seen]
    abar = teacher.schedule.alphas_cumprod.float()
    # the sampler's fresh noise at each step, read back from x_t = √ᾱ x̂_0 + √(1-ᾱ) z
    noises = [seen[0].x_t] + [(s.x_t - abar[s.t].sqrt() * before.x0_pred) / (1 - abar[s.t]).sqrt()
                              for before, s in zip(seen, seen[1:])]
    for i, step in enumerate(seen):
        x_t = backward_simulation(student, torch.stack(noises[:i + 1]), timesteps, abar, c, None, w)
        assert torch.allclose(x_t, step.x_t, atol=1e-5), f"step {i}"


def test_dmd_tunes_a_consistency_student_that_ships_without_its_critic(teacher_dir, course_files, tmp_path):  # noqa: F811
    first = tiny_distill_config(teacher_dir, course_files, tmp_path, "c", max_steps=2)
    distill(first, show_progress=False)
    cfg = tiny_distill_config(teacher_dir, course_files, tmp_path, "d", objective="dmd", init_student=first.export_dir,
                              lr=1e-3)
    distill(cfg, show_progress=False)
    before = DiffusionPipeline.from_pretrained(first.export_dir, device="cpu")
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir, device="cpu")
    assert pipe.guidance_distilled and pipe.default_sampling == {"sampler": "consistency", "steps": 4, "guidance": 5.0}
    assert pipe.model.state_dict().keys() == before.model.state_dict().keys()  # the critic is not shipped
    assert not all(torch.equal(v, before.model.state_dict()[k]) for k, v in pipe.model.state_dict().items())
    state = load_file(Path(cfg.out_dir) / "state.safetensors")
    assert any(k.startswith("model.critic.") for k in state)  # the critic resumes; the EMA averages the student alone
    assert {k for k in state if k.startswith("ema.")} == {f"ema.{k}" for k in pipe.model.state_dict()}
    assert pipe.generate(num_images=2, classes=["food"], seed=0).images.shape == (2, 16, 16, 3)
    card = (Path(cfg.export_dir) / "README.md").read_text()
    assert "distribution matching (Yin et al. 2024" in card and f"`{first.export_dir}`" in card

    # with the consistency loss beside it and a faster critic, it resumes exactly
    regularised = dict(objective="dmd", init_student=first.export_dir, lr=1e-3, regression_weight=0.5, critic_lr_scale=3.0)
    straight = tiny_distill_config(teacher_dir, course_files, tmp_path, "e", **regularised)
    distill(straight, show_progress=False)
    split = tiny_distill_config(teacher_dir, course_files, tmp_path, "f", **regularised, max_steps=2)
    distill(split, show_progress=False)
    split.max_steps = 4
    distill(split, resume=True, show_progress=False)
    a, b = (load_file(Path(c.out_dir) / "state.safetensors") for c in (straight, split))
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng.")), "resumed weights differ"
    with safe_open(str(Path(split.out_dir) / "state.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 3.0] and groups[1]["lr"] == pytest.approx(3 * groups[0]["lr"])

    guided = tiny_distill_config(teacher_dir, course_files, tmp_path, "g", objective="guidance", max_steps=1)
    distill(guided, show_progress=False)
    with pytest.raises(ValueError, match="is not a consistency student"):
        distill(tiny_distill_config(teacher_dir, course_files, tmp_path, "h", objective="dmd",
                                    init_student=guided.export_dir), show_progress=False)


@pytest.mark.parametrize("args,message", [
    (["--objective", "dmd"], "the dmd objective tunes a consistency student: set init_student"),
    (["--objective", "dmd", "--init-student", "x", "--config", "{}"], "dmd_noise_range must be [lo, hi]"),
    (["--objective", "dmd", "--init-student", "x", "--regression-weight", "-1"], "regression_weight must be >= 0"),
    (["--objective", "dmd", "--init-student", "x", "--critic-lr-scale", "0"], "critic_lr_scale must be > 0"),
])
def test_bad_dmd_arguments_print_the_message_and_exit_non_zero(args, message, tmp_path, capsys):
    if "{}" in args:
        config = tmp_path / "c.json"
        config.write_text('{"dmd_noise_range": [0.9, 0.1]}')
        args = [str(config) if a == "{}" else a for a in args]
    code = main(["distill", "--quiet", "--out-dir", str(tmp_path / "r"), "--export-dir", str(tmp_path / "e"), *args])
    assert code == 2 and message in capsys.readouterr().err
