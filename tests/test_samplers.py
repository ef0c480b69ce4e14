"""Samplers against exact answers, with the closed-form denoiser for Gaussian data."""
import math

import pytest
import torch

from diffusion_core.explain import step_update
from diffusion_core.samplers import SAMPLERS, consistency_step, ddim_step, ddpm_step, dpmpp_2m_sde_step, dpmpp_2m_step, sample

from conftest import GaussianDenoiser

SHAPE = (16, 1, 32, 32)  # 16k pixel values: mean and std are known to well under 1%


def moments(x):
    return x.mean().item(), x.std().item()


def exact_flow_error(schedule, sampler, steps, mu=0.5, s=0.3):
    """RMS distance, in units of s, between a sampler's output and the exact probability-flow map
    for N(mu, s²) data, x_0 = mu + s (x_T - √ᾱ_T mu)/√(ᾱ_T s² + 1 - ᾱ_T), from the same x_T; and the mean."""
    first = []
    x = sample(GaussianDenoiser(schedule, mu=mu, s=s), schedule, SHAPE, sampler=sampler, steps=steps,
               callback=lambda step: first.append(step.x_t) if step.index == 0 else None)
    abar = schedule.alphas_cumprod[-1].item()
    exact = mu + s * (first[0] - math.sqrt(abar) * mu) / math.sqrt(abar * s * s + 1 - abar)
    return ((x - exact).pow(2).mean().sqrt() / s).item(), x.mean().item()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_deterministic_samplers_keep_the_gaussian_mean_exactly_at_10_plus_steps(schedule, sampler, steps):
    _, mean = exact_flow_error(schedule, sampler, steps)
    first = []
    sample(GaussianDenoiser(schedule), schedule, SHAPE, steps=1, callback=lambda st: first.append(st.x_t))
    assert mean == pytest.approx(0.5 + 0.3 * first[0].mean().item(), abs=1e-3)


def test_dpm_solver_pp_follows_the_exact_flow_tightly(schedule):
    assert exact_flow_error(schedule, "dpmpp_2m", 20)[0] < 0.03
    assert exact_flow_error(schedule, "dpmpp_2m", 50)[0] < 0.001


def test_ddim_converges_to_the_exact_flow_at_first_order(schedule):
    e20, e40, e100 = (exact_flow_error(schedule, "ddim", n)[0] for n in (20, 40, 100))
    assert 1.6 < e20 / e40 < 2.4  # halving the step halves the error: first order (Euler)
    assert e100 < 0.03


def test_ddpm_at_full_steps_reproduces_gaussian_data(schedule):
    """65k values (std known to 0.3%); measured 0.396 of 0.4 on this chain, so 1.5% lets no
    few-percent bug through (the noise term itself is checked exactly below)."""
    x = sample(GaussianDenoiser(schedule, mu=-0.2, s=0.4), schedule, (64, 1, 32, 32), sampler="ddpm", steps=1000)
    mean, std = moments(x)
    assert mean == pytest.approx(-0.2, abs=0.005)
    assert std == pytest.approx(0.4, rel=0.015)


@pytest.mark.parametrize("abar,abar_prev", [(0.01, 0.05), (0.3, 0.5), (0.9, 0.97), (0.999, 0.9995)])
def test_the_noise_terms_of_ddpm_and_the_sde_sampler_are_their_papers_formulas(abar, abar_prev):
    """With x_t = x̂_0 = 0 a step returns its noise term alone. DDPM eq. 7: σ² = β̃ =
    (1-ᾱ_prev)/(1-ᾱ_t) (1-ᾱ_t/ᾱ_prev); SDE-DPM-Solver++(2M): σ_prev √(1-e^{-2h}), σ_prev = √(1-ᾱ_prev),
    h = λ_prev - λ_t, λ = ½ log(ᾱ/(1-ᾱ)); DDIM eq. 16 at η = 1 equals DDPM's."""
    z = torch.randn(4, 1, 3, 3)
    zero = torch.zeros_like(z)
    beta_tilde = (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
    assert torch.allclose(ddpm_step(zero, zero, abar, abar_prev, lambda: z), math.sqrt(beta_tilde) * z, rtol=1e-6, atol=0)
    h = 0.5 * math.log(abar_prev / (1 - abar_prev)) - 0.5 * math.log(abar / (1 - abar))
    sde, _ = dpmpp_2m_sde_step(zero, zero, None, abar, abar_prev, None, lambda: z)
    assert torch.allclose(sde, math.sqrt(1 - abar_prev) * math.sqrt(1 - math.exp(-2 * h)) * z, rtol=1e-6, atol=0)
    ddim = ddim_step(zero, zero, zero, abar, abar_prev, 1.0, lambda: z)
    assert torch.allclose(ddim, math.sqrt(beta_tilde) * z, rtol=1e-6, atol=0)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm", "dpmpp_2m_sde"])
def test_each_sampler_follows_a_guess_of_x0_that_changes_at_every_step(schedule, sampler):
    """E[x_0 | x_t] for N(-0.2, 0.4²) data moves with x_t: nearly flat at first, the data's spread at the
    end. Returning the last guess is not enough here (unlike a one-point data set): the output has the
    data's mean and spread only if every update moved x_t correctly (measured at 50 steps: std 0.370
    to 0.408)."""
    spread = []
    x = sample(GaussianDenoiser(schedule, mu=-0.2, s=0.4), schedule, (64, 1, 32, 32), sampler=sampler, steps=50,
               callback=lambda step: spread.append(step.x0_pred.std().item()))
    assert spread[0] < 0.01 and spread[-1] > 0.35  # the guess changed from step to step
    mean, std = moments(x)
    assert mean == pytest.approx(-0.2, abs=0.01) and std == pytest.approx(0.4, rel=0.08)


def test_sde_dpm_solver_pp_first_order_step_is_the_ddpm_posterior_step():
    x_t, x0, z = torch.randn(3, 2, 1, 4, 4)
    for abar, abar_prev in ((0.01, 0.05), (0.3, 0.5), (0.9, 0.97)):
        ddpm = ddpm_step(x_t, x0, abar, abar_prev, noise=lambda: z)
        sde, _ = dpmpp_2m_sde_step(x_t, x0, None, abar, abar_prev, None, noise=lambda: z)
        assert torch.allclose(ddpm, sde, atol=1e-5)


def test_sde_dpm_solver_pp_reproduces_gaussian_data_and_beats_ddpm_at_20_steps(schedule):
    data = dict(mu=0.1, s=0.5)
    mean, std = moments(sample(GaussianDenoiser(schedule, **data), schedule, SHAPE, sampler="dpmpp_2m_sde", steps=100))
    assert mean == pytest.approx(0.1, abs=0.02) and std == pytest.approx(0.5, rel=0.02)
    std_error = {name: abs(moments(sample(GaussianDenoiser(schedule, **data), schedule, SHAPE, sampler=name,
                                          steps=20))[1] - 0.5) for name in ("ddpm", "dpmpp_2m_sde")}
    assert std_error["dpmpp_2m_sde"] < 0.05 * 0.5 < std_error["ddpm"]  # measured: 4% too wide vs 13% too narrow


def test_v_prediction_gives_the_same_samples_as_epsilon(schedule):
    eps_model = GaussianDenoiser(schedule)

    def v_model(x_t, t, context):  # v = √ᾱ ε - √(1-ᾱ) x̂_0, from the same exact ε
        eps = eps_model(x_t, t, context)
        abar = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0

    a = sample(eps_model, schedule, (2, 1, 8, 8), sampler="ddim", steps=20)
    b = sample(v_model, schedule, (2, 1, 8, 8), sampler="ddim", steps=20, prediction_type="v")
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_point_data_set_is_returned_exactly(schedule, sampler):
    steps = 1000 if sampler == "ddpm" else 10
    x = sample(GaussianDenoiser(schedule, mu=0.25, s=0.0), schedule, (2, 3, 4, 4), sampler=sampler, steps=steps)
    assert torch.allclose(x, torch.full_like(x, 0.25), atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_with_the_exact_consistency_function_draws_the_data_in_any_step_count(schedule, steps):
    """For N(mu, s²) data the probability-flow ODE maps x_t to mu + s(x_t - √ᾱ mu)/√(ᾱ s² + 1 - ᾱ): a
    perfect consistency function. Re-noising its answer (Song et al. 2023, Algorithm 1) keeps every
    x_t exactly on the marginals, so even one step draws the data distribution."""
    mu, s = 0.2, 0.4

    def consistency_model(x_t, t, context):  # f as an ε-prediction: ε = (x_t - √ᾱ f) / √(1-ᾱ)
        abar = schedule.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
        f = mu + s * (x_t - abar.sqrt() * mu) / (abar * s**2 + 1 - abar).sqrt()
        return (x_t - abar.sqrt() * f) / (1 - abar).sqrt()

    mean, std = moments(sample(consistency_model, schedule, SHAPE, sampler="consistency", steps=steps, seed=1))
    assert mean == pytest.approx(mu, abs=0.02) and std == pytest.approx(s, rel=0.03)


def test_ddim_with_eta_one_still_matches_the_data_distribution(schedule):
    mean, std = moments(sample(GaussianDenoiser(schedule, mu=0.1, s=0.5), schedule, SHAPE, sampler="ddim", steps=250, eta=1.0))
    assert mean == pytest.approx(0.1, abs=0.02) and std == pytest.approx(0.5, rel=0.03)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 30, 999, 1000])
def test_steps_n_makes_exactly_n_calls_from_T_minus_1_down(schedule, sampler, n):
    den = GaussianDenoiser(schedule)
    steps_seen = []
    x = sample(den, schedule, (1, 1, 2, 2), sampler=sampler, steps=n, callback=lambda s: steps_seen.append(s.t))
    ts = [c[0][0] for c in den.calls]
    assert len(den.calls) == n and ts == steps_seen and ts == schedule.respace(n).tolist()
    assert ts[0] == 999 and min(ts) >= 0 and all(a > b for a, b in zip(ts, ts[1:]))
    if n == 1000:
        assert ts[-1] == 0
    assert torch.isfinite(x).all()


def conditional_denoiser(schedule):
    return GaussianDenoiser(schedule, mu=0.0, s=0.2, shift=torch.tensor([0.5, -0.5]))


def test_guidance_zero_equals_unconditional_and_one_equals_conditional(schedule):
    ctx = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    shape = (2, 1, 4, 4)
    uncond = sample(conditional_denoiser(schedule), schedule, shape, steps=10, context=None, seed=3)
    w0 = sample(conditional_denoiser(schedule), schedule, shape, steps=10, context=ctx, guidance=0.0, seed=3)
    assert torch.equal(uncond, w0)
    den = conditional_denoiser(schedule)
    always_cond = lambda x, t, c: den(x, t, ctx)
    cond = sample(always_cond, schedule, shape, steps=10, context=None, seed=3)
    w1 = sample(conditional_denoiser(schedule), schedule, shape, steps=10, context=ctx, guidance=1.0, seed=3)
    assert torch.equal(cond, w1)


def test_guidance_batches_both_branches_in_one_call_per_step(schedule):
    ctx = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    den = conditional_denoiser(schedule)
    sample(den, schedule, (2, 1, 4, 4), steps=7, context=ctx, guidance=4.0)
    assert len(den.calls) == 7
    for _, batch, context in den.calls:
        assert batch == 4 and torch.equal(context[:2], ctx) and torch.equal(context[2:], torch.zeros_like(ctx))


def test_guided_output_is_uncond_plus_w_times_difference(schedule):
    ctx = torch.tensor([[1.0, 0.0]])
    den = conditional_denoiser(schedule)
    w = 3.0
    manual = lambda x, t, c: den(x, t, torch.zeros_like(ctx)) + w * (den(x, t, ctx) - den(x, t, torch.zeros_like(ctx)))
    a = sample(manual, schedule, (1, 1, 4, 4), steps=10, seed=1)
    b = sample(conditional_denoiser(schedule), schedule, (1, 1, 4, 4), steps=10, context=ctx, guidance=w, seed=1)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_image_i_is_bit_identical_in_a_batch_of_1_or_16(schedule, sampler):
    den = GaussianDenoiser(schedule)
    big = sample(den, schedule, (16, 3, 8, 8), sampler=sampler, steps=20, eta=0.5, seed=7)
    small = sample(den, schedule, (1, 3, 8, 8), sampler=sampler, steps=20, eta=0.5, seed=7)
    assert torch.equal(big[0], small[0])
    assert not torch.equal(big[0], big[1])


def test_callback_sees_x_t_and_predicted_x0(schedule):
    seen = []
    sample(GaussianDenoiser(schedule, mu=0.3, s=0.0), schedule, (1, 1, 2, 2), steps=5, callback=seen.append)
    assert [s.index for s in seen] == list(range(5))
    assert all(torch.allclose(s.x0_pred, torch.full_like(s.x0_pred, 0.3), atol=1e-4) for s in seen)
    assert seen[0].x_t.std() > 0.3  # the first x_t is pure noise


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=0), "steps must be an integer in 1..1000"),
    (dict(steps=-3), "steps must be an integer in 1..1000"),
    (dict(steps=1001), "steps must be an integer in 1..1000"),
    (dict(guidance=float("nan")), "guidance must be a finite number in 0..50"),
    (dict(guidance=float("inf")), "guidance must be a finite number in 0..50"),
    (dict(guidance=-1.0), "guidance must be a finite number in 0..50"),
    (dict(sampler="euler"), "sampler must be one of"),
    (dict(eta=2.0), "eta must be a number in 0..1"),
    (dict(prediction_type="x0"), "prediction_type must be one of"),
    (dict(context=torch.zeros(3, 2)), r"context must have shape \(N=2, K\)"),
])
def test_bad_sampling_arguments_raise_value_errors_naming_the_argument(schedule, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(GaussianDenoiser(schedule), schedule, (2, 1, 4, 4), **kwargs)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde", "consistency"])
def test_the_explained_update_has_the_coefficients_the_sampler_uses(schedule, sampler):
    """step_update's numbers are the step functions' own: run one step on x_t = 1, x̂_0 = 0 (then
    x_t = 0, x̂_0 = 1) with no noise and find the results in the formula."""
    steps, index = 10, 3
    update = step_update(sampler, schedule, steps, index)
    a, a_prev = update.alpha_bar, update.alpha_bar_prev
    assert update.t == schedule.respace(steps).tolist()[index] and a_prev > a
    zero = lambda: torch.zeros(1)  # noqa: E731

    def step(x_t, x0):
        x_t, x0 = torch.tensor([x_t]), torch.tensor([x0])
        eps = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
        if sampler == "ddim":
            return ddim_step(x_t, x0, eps, a, a_prev, 0.0, zero).item()
        if sampler == "ddpm":
            return ddpm_step(x_t, x0, a, a_prev, zero).item()
        if sampler == "consistency":
            return consistency_step(x0, a_prev, zero).item()
        if sampler == "dpmpp_2m":
            return dpmpp_2m_step(x_t, x0, None, a, a_prev, None)[0].item()
        return dpmpp_2m_sde_step(x_t, x0, None, a, a_prev, None, zero)[0].item()

    if sampler == "consistency":  # x_t does not enter: check the x̂_0 coefficient
        assert f"{step(0.0, 1.0):.3f}\\,\\hat x_0" in update.formula and step(1.0, 0.0) == 0.0
    elif sampler == "ddim":  # written in x̂_0 and ε̂: ddim_step's own coefficient of each
        ones, zeros = torch.ones(1), torch.zeros(1)
        c_x0 = ddim_step(zeros, ones, zeros, a, a_prev, 0.0, zero).item()
        c_eps = ddim_step(zeros, zeros, ones, a, a_prev, 0.0, zero).item()
        assert f"{c_x0:.3f}\\,\\hat x_0 + {c_eps:.3f}\\,\\hat\\epsilon" in update.formula
    else:
        assert f"{step(1.0, 0.0):.3f}\\,x_{{{update.t}}}" in update.formula
        assert f"{step(0.0, 1.0):.3f}\\," in update.formula
    if sampler in ("ddpm", "dpmpp_2m_sde", "consistency"):  # the noise term: the step on x_t = x̂_0 = 0, z = 1
        one = lambda: torch.ones(1)  # noqa: E731
        zeros = torch.zeros(1)
        noise = {"ddpm": lambda: ddpm_step(zeros, zeros, a, a_prev, one),
                 "consistency": lambda: consistency_step(zeros, a_prev, one),
                 "dpmpp_2m_sde": lambda: dpmpp_2m_sde_step(zeros, zeros, None, a, a_prev, None, one)[0]}[sampler]().item()
        assert f"{noise:.3f}\\,z" in update.formula
    assert step_update(sampler, schedule, steps, steps - 1).formula == r"x_0 = \hat x_0"
    with pytest.raises(ValueError, match="step must be in 0..9"):
        step_update(sampler, schedule, steps, 10)


def test_guidance_interval_guides_only_inside_it_and_saves_the_other_branch(schedule):
    """Kynkäänniemi et al. 2024: guidance only for σ in (lo, hi]; elsewhere one conditional call."""
    from diffusion_core.samplers import in_guidance_interval

    ctx = torch.ones(2, 1)
    full = GaussianDenoiser(schedule, shift=torch.tensor([0.4]))
    x_full = sample(full, schedule, (2, 1, 4, 4), sampler="ddim", steps=10, guidance=3.0, context=ctx)
    part = GaussianDenoiser(schedule, shift=torch.tensor([0.4]))
    x_part = sample(part, schedule, (2, 1, 4, 4), sampler="ddim", steps=10, guidance=3.0, context=ctx,
                    guidance_interval=(0.5, 5.0))
    abar = schedule.alphas_cumprod
    inside = [in_guidance_interval(abar[t].item(), (0.5, 5.0)) for t in schedule.respace(10).tolist()]
    assert 0 < sum(inside) < 10
    assert [batch == 4 for _, batch, _ in part.calls] == inside  # both branches inside, one outside
    assert all(batch == 4 for _, batch, _ in full.calls)
    assert not torch.equal(x_full, x_part)
    wide = GaussianDenoiser(schedule, shift=torch.tensor([0.4]))
    x_wide = sample(wide, schedule, (2, 1, 4, 4), sampler="ddim", steps=10, guidance=3.0, context=ctx,
                    guidance_interval=(0.0, math.inf))
    assert torch.equal(x_wide, x_full)  # an interval holding every step is guidance everywhere
    with pytest.raises(ValueError, match="guidance_interval must satisfy"):
        sample(wide, schedule, (2, 1, 4, 4), steps=2, guidance_interval=(3.0, 1.0))
