"""Distillation: the student starts as its teacher, learns the teacher's guided ODE, resumes exactly,
and ships as a checkpoint that samples itself in a few single-branch steps."""
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from diffusion_core.__main__ import main
from diffusion_core.distill import (consistency_distance, distill, guided_teacher, one_step_x0,
                                    pseudo_huber, segment_end_target, start_student, student_ode_step, student_of,
                                    teacher_ode_step, v_target, x0_from_v)
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.samplers import ddim_step
from diffusion_core.schedule import NoiseSchedule

from conftest import COURSE_LABELS, tiny_distill_config


def test_the_student_starts_as_its_teacher_whatever_w(teacher_dir):
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    student = student_of(teacher)
    x, t, c = torch.randn(3, 3, 16, 16), torch.tensor([3, 20, 49]), torch.eye(5)[:3]
    expected = teacher.model.to(memory_format=torch.contiguous_format)(x, t, c)  # the student's layout: exact
    for w in (0.0, 1.0, 7.5):
        assert torch.equal(student(x, t, c, guidance=torch.full((3,), w)), expected)
    with pytest.raises(ValueError, match="needs guidance"):
        student(x, t, c)
    with pytest.raises(ValueError, match="takes no guidance input"):
        teacher.model(x, t, c, guidance=torch.ones(3))


def test_a_flip_conditioned_teachers_student_drops_the_flip_input():
    from diffusion_core.unet import UNet

    model = UNet(image_size=16, base_channels=8, channel_mults=[1, 2], attention_resolutions=[8], num_heads=2,
                 num_groups=4, context_dim=5, flip_condition=True)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    teacher = DiffusionPipeline(model, NoiseSchedule("cosine", 50), ["a", "b", "c", "d", "e"], [])
    student = student_of(teacher)
    assert not student.flip_condition and not hasattr(student, "flip_embedding")
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([3, 40]), torch.eye(5)[:2]
    with torch.no_grad():
        expected = model.to(memory_format=torch.contiguous_format)(x, t, c)  # the pipeline made it channels_last
        assert torch.equal(student(x, t, c, guidance=torch.full((2,), 3.0)), expected)


def test_the_teachers_step_is_the_guided_ddim_step_of_the_sampler(teacher_dir):
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu").model
    schedule = NoiseSchedule("cosine", 50)
    abar = schedule.alphas_cumprod.float()
    x_t, context = torch.randn(2, 3, 16, 16), torch.eye(5)[:2]
    t, s, w = torch.tensor([30, 30]), torch.tensor([20, 20]), torch.tensor([3.0, 3.0])
    x_s, x0 = teacher_ode_step(teacher, x_t, t, context, None, w, abar[t], abar[s])
    with torch.no_grad():
        eps = teacher(x_t, t, torch.zeros_like(context)) + 3.0 * (teacher(x_t, t, context) - teacher(x_t, t, torch.zeros_like(context)))
    a, a_prev = abar[30].item(), abar[20].item()
    x0_expected = ((x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
    eps = (x_t - math.sqrt(a) * x0_expected) / math.sqrt(1 - a)
    assert torch.allclose(x0, x0_expected, atol=1e-5)
    assert torch.allclose(x_s, ddim_step(x_t, x0_expected, eps, a, a_prev, 0.0, None), atol=1e-5)


def test_pseudo_huber_is_zero_for_equal_pictures_and_grows_like_the_distance():
    a = torch.zeros(2, 3, 4, 4)
    assert pseudo_huber(a, a, 0.03).item() == 0.0
    far = torch.full_like(a, 1.0)  # ‖a - b‖ = √48 per picture
    assert pseudo_huber(far, a, 0.03).item() == pytest.approx(math.sqrt(48) - 0.03, rel=1e-3)
    near = torch.full_like(a, 1e-4)  # ≈ ‖d‖²/(2c) for small d
    assert pseudo_huber(near, a, 0.03).item() == pytest.approx(48e-8 / 0.06, rel=1e-2)


def test_the_distance_on_v_is_the_distance_between_the_students_v_outputs():
    torch.manual_seed(0)
    x_t, v_a, v_b = torch.randn(3, 2, 3, 4, 4).unbind(0)
    alpha_bar = torch.tensor([0.999, 0.5])
    x0_a, x0_b = x0_from_v(v_a, x_t, alpha_bar), x0_from_v(v_b, x_t, alpha_bar)
    on_v = consistency_distance(x0_a, x0_b, alpha_bar, 0.03, "v")
    assert on_v.item() == pytest.approx(pseudo_huber(v_a, v_b, 0.03).item(), rel=1e-5)
    assert consistency_distance(x0_a, x0_b, alpha_bar, 0.03).item() == pytest.approx(pseudo_huber(x0_a, x0_b, 0.03).item())
    assert on_v > consistency_distance(x0_a, x0_b, alpha_bar, 0.03)  # the quiet picture weighs ~30x more


def test_a_distillation_can_start_from_an_earlier_student_and_learn_on_v(teacher_dir, course_files, tmp_path):
    first = tiny_distill_config(teacher_dir, course_files, tmp_path, "a", max_steps=2)
    distill(first, show_progress=False)
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    earlier = DiffusionPipeline.from_pretrained(first.export_dir, device="cpu").model.state_dict()
    started = start_student(teacher, first.export_dir).state_dict()
    assert all(torch.equal(started[k], earlier[k]) for k in earlier)
    assert not all(torch.equal(student_of(teacher).state_dict()[k], earlier[k]) for k in earlier)  # it did learn
    step_export = str(Path(first.out_dir) / "exports" / "step_0000002")  # every export carries its card
    main(["distill", "--teacher", str(teacher_dir), "--data", course_files, "--out-dir", str(tmp_path / "b" / "run"),
          "--export-dir", str(tmp_path / "b" / "export"), "--init-student", step_export, "--loss-space", "v",
          "--max-steps", "1", "--precision", "fp32", "--batch-size", "6", "--skeleton-steps", "5", "--quiet"])
    card = (tmp_path / "b" / "export" / "README.md").read_text()
    assert f"`{step_export}` (an earlier student" in card and "pseudo-Huber on v" in card
    this_run, _, before = card.partition(f"### Before this run: how `{step_export}` was distilled (from its card)")
    assert "| images seen | 6 |" in this_run and "| images seen | 12 |" in before and "pseudo-Huber on x̂_0" in before
    # config.json's recipe: the teacher's, the earlier student's config, this one's (each run's own copy)
    assert DiffusionPipeline.from_pretrained(tmp_path / "b" / "export").recipe == [
        "configs/teacher.json", str(Path(first.out_dir) / "config.json"), str(tmp_path / "b" / "run" / "config.json")]
    with pytest.raises(ValueError, match="is not a student of this teacher's architecture"):
        start_student(teacher, str(teacher_dir))


def test_distillation_ships_a_student_that_samples_itself_in_one_call_per_step(teacher_dir, course_files, tmp_path):
    cfg = tiny_distill_config(teacher_dir, course_files, tmp_path, "a")
    distill(cfg, show_progress=False)
    log = pd.read_csv(Path(cfg.out_dir) / "log.csv")
    assert log["step"].tolist() == [1, 2, 3, 4] and log["loss"].notna().all()
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir, device="cpu")
    assert pipe.guidance_distilled and pipe.prediction_type == "v" and pipe.labels == COURSE_LABELS
    assert pipe.default_sampling == {"sampler": "consistency", "steps": 4, "guidance": 5.0}
    calls = []
    denoise = pipe.denoise  # the rows a call asks for (the network itself sees them in fixed 16-row chunks)
    pipe.denoise = lambda x, t, c=None, g=None: calls.append((len(x), g)) or denoise(x, t, c, g)
    out = pipe.generate(num_images=3, classes=["food"], seed=0)
    assert out.images.shape == (3, 16, 16, 3) and len(calls) == 4
    assert all(n == 3 and torch.equal(g, torch.full((3,), 5.0)) for n, g in calls)  # one branch, w as input
    weak = pipe.generate(num_images=3, classes=["food"], guidance=1.0, seed=0)
    assert not (weak.images == out.images).all()  # w changes the pictures
    with pytest.raises(ValueError, match="guidance_interval does not apply"):
        pipe.generate(num_images=1, classes=["food"], guidance_interval=(0.5, 5.0))
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        pipe.generate(num_images=1, classes=["food"], guidance=float("nan"))
    card = (Path(cfg.export_dir) / "README.md").read_text()
    assert f"`{teacher_dir}`" in card and "| images seen | 24 |" in card and "configs/run.json" in card
    assert (Path(cfg.export_dir) / "samples.png").exists() and (Path(cfg.export_dir) / "training_log.csv").exists()
    assert sorted(p.name for p in (Path(cfg.out_dir) / "exports").iterdir()) == ["step_0000002", "step_0000004"]


def test_the_guidance_target_is_the_teachers_guided_prediction_as_v(teacher_dir):
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    torch.manual_seed(0)
    x_t, t = torch.randn(4, 3, 16, 16), torch.tensor([49, 30, 10, 0])
    context, w = torch.eye(5)[[0, 1, 2, 3]], torch.tensor([1.0, 2.0, 5.0, 8.0])
    a_t = teacher.schedule.alphas_cumprod.float()[t]
    x0, eps = guided_teacher(teacher.model, x_t, t, context, None, w, a_t)
    with torch.no_grad():  # as the teacher runs (its attention kernel differs when training: unet.attend)
        cond, uncond = teacher.model(x_t, t, context), teacher.model(x_t, t, torch.zeros_like(context))
    by_hand = (x_t - (1 - a_t).sqrt().view(-1, 1, 1, 1) * (uncond + w.view(-1, 1, 1, 1) * (cond - uncond)))
    assert torch.allclose(x0, (by_hand / a_t.sqrt().view(-1, 1, 1, 1)).clamp(-1, 1), atol=1e-5)
    v = v_target(x0, eps, a_t)
    assert torch.allclose(x0_from_v(v, x_t, a_t), x0, atol=1e-5)  # the sampler reads the teacher's x̂_0 back


def test_guidance_distillation_ships_a_one_call_per_step_student_for_the_teachers_samplers(teacher_dir, course_files, tmp_path):
    cfg = tiny_distill_config(teacher_dir, course_files, tmp_path, "g", objective="guidance", guidance_range=[1.0, 4.0])
    distill(cfg, show_progress=False)
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir, device="cpu")
    assert pipe.guidance_distilled and pipe.prediction_type == "v"
    assert pipe.default_sampling == teacher.default_sampling and pipe.default_sampling["sampler"] != "consistency"
    calls = []
    denoise = pipe.denoise  # the rows a call asks for (the network itself sees them in fixed 16-row chunks)
    pipe.denoise = lambda x, t, c=None, g=None: calls.append(len(x)) or denoise(x, t, c, g)
    pipe.generate(num_images=2, classes=["food"], steps=5, seed=0)
    assert calls == [2] * 5  # one branch per step, w as an input
    from diffusion_core.evaluate import default_settings
    assert default_settings(pipe) == default_settings()  # evaluated like its teacher, not like a few-step student
    card = (Path(cfg.export_dir) / "README.md").read_text()
    assert "guidance distilled into it" in card and "Meng et al. 2023, stage one" in card and "| distance | squared error on v |" in card
    with pytest.raises(ValueError, match="default_sampling's sampler must be 'consistency' for the consistency and dmd objectives"):
        tiny_distill_config(teacher_dir, course_files, tmp_path, "h", objective="guidance",
                            default_sampling={"sampler": "consistency", "steps": 4, "guidance": 5.0}).validate()


def test_distillation_resumes_exactly_where_it_stopped(teacher_dir, course_files, tmp_path):
    distill(tiny_distill_config(teacher_dir, course_files, tmp_path, "straight"), show_progress=False)
    distill(tiny_distill_config(teacher_dir, course_files, tmp_path, "split", max_steps=2), show_progress=False)
    distill(tiny_distill_config(teacher_dir, course_files, tmp_path, "split"), resume=True, show_progress=False)
    a, b = (load_file(tmp_path / name / "run" / "state.safetensors") for name in ("straight", "split"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng.")), "resumed weights differ"


def test_export_only_writes_the_saved_student_in_half_precision_without_training(teacher_dir, course_files, tmp_path):
    cfg = tiny_distill_config(teacher_dir, course_files, tmp_path, "a", max_steps=2)
    distill(cfg, show_progress=False)
    log_before = (Path(cfg.out_dir) / "log.csv").read_text()
    main(["distill", "--teacher", str(teacher_dir), "--data", course_files, "--out-dir", cfg.out_dir,
          "--export-dir", str(tmp_path / "half"), "--weights-dtype", "float16", "--export-only", "--quiet"])
    assert (Path(cfg.out_dir) / "log.csv").read_text() == log_before  # nothing trained
    assert {t.dtype for t in load_file(tmp_path / "half" / "model.safetensors").values()} == {torch.float16}
    full = DiffusionPipeline.from_pretrained(cfg.export_dir, device="cpu")
    half = DiffusionPipeline.from_pretrained(tmp_path / "half", device="cpu")
    for k, v in full.model.state_dict().items():
        assert torch.equal(half.model.state_dict()[k], v.half().float()), k


def test_the_guidance_embedding_can_learn_at_a_multiple_of_the_lr_and_resumes_only_so(teacher_dir, course_files, tmp_path):
    import json
    from safetensors import safe_open

    cfg = tiny_distill_config(teacher_dir, course_files, tmp_path, "a", max_steps=2, guidance_lr_scale=20.0)
    distill(cfg, show_progress=False)
    with safe_open(str(Path(cfg.out_dir) / "state.safetensors"), "pt") as f:
        rest, guidance = json.loads(f.metadata()["param_groups"])
    assert guidance["lr"] == pytest.approx(20 * rest["lr"]) and rest["lr"] > 0
    names = [n for n, _ in student_of(DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")).named_parameters()]
    assert len(guidance["params"]) == sum(n.startswith("guidance_mlp.") for n in names) == 4
    assert "| lr (w embedding) | 0.0001 (0.002) |" in (Path(cfg.export_dir) / "README.md").read_text()
    distill(tiny_distill_config(teacher_dir, course_files, tmp_path, "a", max_steps=3, guidance_lr_scale=5.0),
            resume=True, show_progress=False)  # a new multiple applies from the resumed step on
    with safe_open(str(Path(cfg.out_dir) / "state.safetensors"), "pt") as f:
        rest, guidance = json.loads(f.metadata()["param_groups"])
    assert guidance["lr"] == pytest.approx(5 * rest["lr"])
    with pytest.raises(ValueError, match="holds 2 optimizer parameter group"):
        distill(tiny_distill_config(teacher_dir, course_files, tmp_path, "a", max_steps=4), resume=True, show_progress=False)


@pytest.mark.parametrize("args,message", [
    (["--teacher", "no/such/folder/x"], "model must be a checkpoint folder or a Hub repo id"),
    (["--skeleton-steps", "1"], "skeleton_steps must be >= 2"),
    (["--weights-dtype", "int8"], "weights_dtype must be one of"),
    (["--loss-space", "eps"], "loss_space must be 'x0' or 'v', got 'eps'"),
    (["--guidance-lr-scale", "0"], "guidance_lr_scale and critic_lr_scale must be > 0"),
    (["--objective", "halving"], "objective must be one of ('consistency', 'guidance', 'progressive', 'dmd'), got 'halving'"),
    (["--objective", "progressive", "--skeleton-steps", "8"], "the progressive objective halves a student that takes w"),
    (["--objective", "progressive", "--skeleton-steps", "5", "--init-student", "x"], "and an even skeleton_steps"),
    (["--segments", "4", "--skeleton-steps", "25"], "a divisor of skeleton_steps (25), got 4"),
    (["--segments", "0"], "segments (multistep consistency) must be 1, or"),
    (["--segments", "2", "--objective", "guidance", "--skeleton-steps", "4"], "with the consistency objective, >= 2"),
])
def test_bad_distill_arguments_print_the_message_and_exit_non_zero(args, message, tmp_path, capsys):
    code = main(["distill", "--quiet", "--out-dir", str(tmp_path / "r"), "--export-dir", str(tmp_path / "e"), *args])
    assert code == 2 and message in capsys.readouterr().err


def test_a_student_cannot_be_distilled_again(teacher_dir, course_files, tmp_path):
    cfg = tiny_distill_config(teacher_dir, course_files, tmp_path, "a", max_steps=1, checkpoint_every=1)
    distill(cfg, show_progress=False)
    again = tiny_distill_config(cfg.export_dir, course_files, tmp_path, "b")
    with pytest.raises(ValueError, match="already a distilled student"):
        distill(again, show_progress=False)


def test_one_ddim_step_from_the_progressive_target_lands_where_two_steps_land(teacher_dir):
    schedule = NoiseSchedule("cosine", 50)
    abar = schedule.alphas_cumprod.float()
    torch.manual_seed(0)
    x_t, x_s = torch.randn(2, 2, 3, 4, 4).unbind(0)
    t, s = torch.tensor([49, 30]), torch.tensor([30, 10])
    x_tilde = one_step_x0(x_t, x_s, abar[t], abar[s])
    for i in range(2):
        a, a_prev = abar[t[i]].item(), abar[s[i]].item()
        eps = (x_t[i] - math.sqrt(a) * x_tilde[i]) / math.sqrt(1 - a)
        assert torch.allclose(ddim_step(x_t[i], x_tilde[i], eps, a, a_prev, 0.0, None), x_s[i], atol=1e-4)
    clean = torch.ones(2)
    assert torch.allclose(one_step_x0(x_t, x_s, abar[t], clean), x_s)  # the last step: x̃ is where it lands
    # a w-student's own DDIM step is the sampler's step with its clipped x̂_0
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    student = student_of(teacher)
    context, w = torch.eye(5)[:2], torch.tensor([2.0, 2.0])
    x = torch.randn(2, 3, 16, 16)
    stepped = student_ode_step(student, x, t, context, None, w, abar[t], abar[s])
    with torch.no_grad():
        v = student(x, t, context, None, w)
    a_t = abar[t].view(-1, 1, 1, 1)
    x0 = (a_t.sqrt() * x - (1 - a_t).sqrt() * v).clamp(-1, 1)
    eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    a_s = abar[s].view(-1, 1, 1, 1)
    assert torch.allclose(stepped, a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps, atol=1e-5)


def test_progressive_distillation_halves_a_w_students_ddim_steps(teacher_dir, course_files, tmp_path):
    from diffusion_core.evaluate import Setting, default_settings

    guided = tiny_distill_config(teacher_dir, course_files, tmp_path, "g", objective="guidance", max_steps=2)
    distill(guided, show_progress=False)
    half = tiny_distill_config(teacher_dir, course_files, tmp_path, "p", objective="progressive", skeleton_steps=8,
                               init_student=guided.export_dir, max_steps=2, guidance_range=[1.0, 4.0])
    distill(half, show_progress=False)
    pipe = DiffusionPipeline.from_pretrained(half.export_dir, device="cpu")
    assert pipe.guidance_distilled and pipe.prediction_type == "v"
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    assert pipe.default_sampling == {"sampler": "ddim", "steps": 4, "guidance": teacher.default_sampling["guidance"]}
    start = DiffusionPipeline.from_pretrained(guided.export_dir, device="cpu").model.state_dict()
    assert not all(torch.equal(pipe.model.state_dict()[k], start[k]) for k in start)  # it learned from its start
    calls = []
    denoise = pipe.denoise  # the rows a call asks for (the network itself sees them in fixed 16-row chunks)
    pipe.denoise = lambda x, t, c=None, g=None: calls.append(len(x)) or denoise(x, t, c, g)
    assert pipe.generate(num_images=2, classes=["food"], seed=0).images.shape == (2, 16, 16, 3) and calls == [2] * 4
    w = teacher.default_sampling["guidance"]
    assert default_settings(pipe) == [Setting("ddim", 4, wi) for wi in dict.fromkeys((w, 2.0, 3.0))]
    card = (Path(half.export_dir) / "README.md").read_text()
    assert "progressive distillation (Salimans & Ho 2022" in card and "distilled to 4 DDIM steps" in card
    # the next halving must walk the steps its start was trained for; a consistency student cannot start one
    wrong = tiny_distill_config(teacher_dir, course_files, tmp_path, "q", objective="progressive", skeleton_steps=8,
                                init_student=half.export_dir)
    with pytest.raises(ValueError, match="samples in 4 DDIM steps: set skeleton_steps to 4"):
        distill(wrong, show_progress=False)
    consistency = tiny_distill_config(teacher_dir, course_files, tmp_path, "c", max_steps=1, checkpoint_every=1)
    distill(consistency, show_progress=False)
    with pytest.raises(ValueError, match="is a consistency student"):
        distill(tiny_distill_config(teacher_dir, course_files, tmp_path, "r", objective="progressive", skeleton_steps=4,
                                    init_student=consistency.export_dir), show_progress=False)


def test_a_segments_target_is_where_one_ddim_step_reaches_the_segments_end(teacher_dir):
    """Multistep consistency (Heek et al. 2024): from x_t, one DDIM step with the target x̂_0 lands where the
    EMA student's DDIM step from x_s lands at the segment's end e, or on x_s itself when s is e; with e clean
    data the target is the EMA's x̂_0 at x_s, the one-segment objective's target."""
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, device="cpu")
    ema = student_of(teacher)
    for p in ema.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    abar = teacher.schedule.alphas_cumprod.float()
    torch.manual_seed(0)
    x_t, x_s = torch.randn(2, 3, 3, 16, 16).unbind(0)
    t, s, e = torch.tensor([45, 40, 35]), torch.tensor([40, 30, 30]), torch.tensor([20, 20, 30])
    context, w = torch.eye(5)[:3], torch.tensor([1.0, 3.0, 6.0])
    s_is_end = s == e
    target = segment_end_target(ema, x_t, x_s, s, context, None, w, abar[t], abar[s], abar[e], s_is_end)
    with torch.no_grad():
        v = ema(x_s, s, context, None, w)
    for i in range(3):
        a_t, a_s, a_e = abar[t[i]].item(), abar[s[i]].item(), abar[e[i]].item()
        x0_s = math.sqrt(a_s) * x_s[i] - math.sqrt(1 - a_s) * v[i]
        eps_s = math.sqrt(1 - a_s) * x_s[i] + math.sqrt(a_s) * v[i]
        x_end = x_s[i] if s_is_end[i] else ddim_step(x_s[i], x0_s, eps_s, a_s, a_e, 0.0, None)
        eps_t = (x_t[i] - math.sqrt(a_t) * target[i]) / math.sqrt(1 - a_t)
        assert torch.allclose(ddim_step(x_t[i], target[i], eps_t, a_t, a_e, 0.0, None), x_end, atol=1e-4)
    clean = torch.ones(3)
    one_segment = segment_end_target(ema, x_t, x_s, s, context, None, w, abar[t], abar[s], clean, torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(one_segment, x0_from_v(v, x_s, abar[s]), atol=1e-5)


def test_multistep_consistency_ships_a_student_that_samples_by_ddim_in_its_segments(teacher_dir, course_files, tmp_path):
    from diffusion_core.evaluate import Setting, default_settings

    cfg = tiny_distill_config(teacher_dir, course_files, tmp_path, "m", skeleton_steps=6, segments=3, max_steps=2)
    distill(cfg, show_progress=False)
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir, device="cpu")
    assert pipe.guidance_distilled and pipe.default_sampling == {"sampler": "ddim", "steps": 3, "guidance": 5.0}
    calls = []
    forward = pipe.model.forward
    pipe.model.forward = lambda x, t, c=None, tok=None, g=None: calls.append(t[0].item()) or forward(x, t, c, tok, g)
    assert pipe.generate(num_images=2, classes=["food"], seed=0).images.shape == (2, 16, 16, 3)
    assert calls == pipe.schedule.respace(6)[::2].tolist()  # one call at each segment's start
    assert default_settings(pipe) == [Setting("ddim", 3, w) for w in (5.0, 2.0, 3.0)]
    card = (Path(cfg.export_dir) / "README.md").read_text()
    assert "multistep consistency distillation (Heek et al. 2024" in card and "cut into 3 segments" in card
    with pytest.raises(ValueError, match="'ddim' for the progressive one and for consistency segments"):
        tiny_distill_config(teacher_dir, course_files, tmp_path, "n", segments=5,
                            default_sampling={"sampler": "consistency", "steps": 4, "guidance": 5.0}).validate()
