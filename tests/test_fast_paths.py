"""The faster training paths compute what the operations they replace compute (outputs and gradients), and a
short training run on them ends where the reference path ends."""
import random

import pytest
import torch
import torch.nn.functional as F

from diffusion_core import unet
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.train import diffusion_loss, ema_update
from diffusion_core.unet import UNet, attend


def attention_inputs(dtype, masked: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(6, 4, n, 24, generator=g).to(dtype).requires_grad_() for n in (64, 16, 16))
    mask = torch.rand(6, 1, 1, 16, generator=g) < 0.5 if masked else None
    if mask is not None:
        mask[..., 0] = True  # as the text encoder keeps its first key
    return q, k, v, mask


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_written_out_attention_matches_torchs_fused_kernel_and_its_gradients(masked, dtype, tol):
    q, k, v, mask = attention_inputs(dtype, masked)
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = attend(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    scale = ref.float().abs().max()
    assert (out.float() - ref.float()).abs().max() <= tol * scale
    for mine, theirs in ((q, q2), (k, k2), (v, v2)):
        assert (mine.grad.float() - theirs.grad.float()).abs().max() <= tol * theirs.grad.float().abs().max()


def test_masked_keys_get_no_attention_at_all():
    q, k, v, _ = attention_inputs(torch.float32, masked=False)
    mask = torch.zeros(6, 1, 1, 16, dtype=torch.bool)
    mask[..., :3] = True
    changed = v.detach().clone()
    changed[:, :, 3:] = 1e3  # what stands behind a masked key must not leak into the output
    assert torch.allclose(attend(q, k, v, mask), attend(q, k, changed, mask), atol=1e-5)


def test_ema_update_is_the_per_parameter_lerp_it_replaces():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    reference = [p.detach().clone() for p in ema.parameters()]
    for p_ref, p in zip(reference, model.parameters()):
        p_ref.lerp_(p.detach(), 1 - 0.9)
    ema_update(ema, model, 0.9)
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), reference))


def tiny_text_unet():
    return UNet(image_size=8, base_channels=8, channel_mults=[1, 2], attention_resolutions=[4], context_dim=4,
                num_heads=2, num_groups=4, vocab_size=20, text_dim=16, text_layers=1, max_tokens=6)


def train_loss_curve(steps: int, attention) -> list[float]:
    """A fixed-seed training run of a tiny text U-Net on fixed random data, with ``attention`` in the U-Net."""
    saved, threads = unet.attend, torch.get_num_threads()
    unet.attend = attention
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and the same on every machine
    try:
        torch.manual_seed(0)
        model = tiny_text_unet()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        schedule = NoiseSchedule("cosine", 100)
        g = torch.Generator().manual_seed(1)
        data = torch.rand(32, 3, 8, 8, generator=g) * 2 - 1
        rng = random.Random(0)
        losses = []
        for step in range(steps):
            g = torch.Generator().manual_seed(step)
            idx = torch.randint(32, (16,), generator=g)
            t = torch.randint(100, (16,), generator=g)
            tokens = torch.tensor([[rng.randrange(1, 20) for _ in range(3)] + [0] * 3 for _ in range(16)])
            loss = diffusion_loss(model, schedule, data[idx], F.one_hot(idx % 4, 4).float(), t,
                                  torch.randn(16, 3, 8, 8, generator=g), "epsilon", tokens)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses
    finally:
        unet.attend = saved
        torch.set_num_threads(threads)


def test_150_training_steps_on_the_fast_attention_end_where_the_fused_kernel_ends():
    def fused(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    ours, reference = train_loss_curve(150, attend), train_loss_curve(150, fused)
    tail = slice(100, 150)  # the last 50 steps' mean loss: the run's end, averaged over its batch noise
    mean_ours, mean_ref = (sum(x[tail]) / 50 for x in (ours, reference))
    spread = torch.tensor(reference[tail]).std().item() / 50 ** 0.5
    assert abs(mean_ours - mean_ref) < 3 * spread + 1e-3
    assert mean_ref < 0.5 * sum(reference[:10]) / 10  # the run learned something, so the comparison means something

