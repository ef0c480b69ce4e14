import math

import pytest
import torch

from diffusion_core.schedule import NoiseSchedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_decreases_from_near_one_to_near_zero(kind):
    s = NoiseSchedule(kind, 1000)
    abar = s.alphas_cumprod
    assert abar.shape == (1000,)
    assert torch.all(abar[1:] < abar[:-1])
    assert abar[0] > 0.999 and abar[-1] < 1e-3


def test_linear_schedule_matches_ddpm_betas():
    s = NoiseSchedule("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)


def test_cosine_schedule_follows_improved_ddpm_formula():
    s = NoiseSchedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 100, 500, 900):
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_add_noise_matches_q_sample_and_has_the_right_variance():
    s = NoiseSchedule("cosine", 1000)
    x0 = torch.full((4000, 1, 2, 2), 0.7)
    t = torch.full((4000,), 300)
    x_t = s.add_noise(x0, torch.randn_like(x0), t)
    abar = s.alphas_cumprod[300].item()
    assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.02)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.05)


def test_snr_is_alpha_bar_over_one_minus_alpha_bar():
    s = NoiseSchedule("linear", 100)
    assert torch.allclose(s.snr(), s.alphas_cumprod / (1 - s.alphas_cumprod))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 30, 999, 1000])
def test_respacing_is_trailing_strictly_decreasing_and_in_range(n):
    steps = NoiseSchedule("cosine", 1000).respace(n)
    assert len(steps) == n and steps[0] == 999 and steps.min() >= 0
    assert torch.all(steps[1:] < steps[:-1])
    if n == 1000:
        assert steps.tolist() == list(range(999, -1, -1))


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, True])
def test_respacing_rejects_steps_outside_1_to_T(bad):
    with pytest.raises(ValueError, match="steps must be an integer in 1..1000"):
        NoiseSchedule("cosine", 1000).respace(bad)


def test_unknown_schedule_kind_is_a_value_error():
    with pytest.raises(ValueError, match="schedule kind"):
        NoiseSchedule("quadratic")
