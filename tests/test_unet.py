import pytest
import torch
import torch.nn.functional as F

from diffusion_core.unet import GroupNorm, UNet, count_flops

from conftest import TINY_UNET


@pytest.mark.parametrize("size,mults", [(16, (1, 2)), (32, (1, 2, 2, 4)), (64, (1, 2, 2, 2))])
def test_unet_maps_images_to_same_shape_predictions(size, mults):
    model = UNet(image_size=size, base_channels=8, channel_mults=mults, attention_resolutions=(8,), context_dim=3,
                 num_heads=2, num_groups=4)
    x = torch.randn(2, 3, size, size)
    out = model(x, torch.tensor([0, 999]), torch.tensor([[1.0, 0, 0], [0.6, 0.4, 0]]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_patch_unet_sees_each_patch_as_one_position_and_predicts_every_pixel():
    torch.manual_seed(0)
    model = UNet(**{**TINY_UNET, "patch_size": 2})
    assert model.conv_in.in_channels == 12 and model.conv_out.out_channels == 12
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    out = model(x, t)
    assert out.shape == x.shape
    seen = {}
    model.conv_in.register_forward_hook(lambda m, i, o: seen.update(stem=i[0]))
    model.conv_out.register_forward_hook(lambda m, i, o: seen.update(head=o))
    out = model(x, t)
    # position (i, j) holds the pixels (2i + a, 2j + b) as channels c·4 + a·2 + b, on the way in and out
    assert seen["stem"].shape == (2, 12, 8, 8) and torch.equal(seen["stem"][:, 4 * 1 + 2 * 1 + 0, 3, 5], x[:, 1, 7, 10])
    assert torch.equal(out[:, 2, 7, 10], seen["head"][:, 4 * 2 + 2 * 1 + 0, 3, 5])
    assert count_flops(model) < count_flops(UNet(**TINY_UNET)) / 2  # the top level runs at a quarter the positions


def test_patch_size_must_divide_the_image_with_its_levels():
    with pytest.raises(ValueError, match="divisible by patch_size x 2\\^1 = 4"):
        UNet(image_size=18, channel_mults=(1, 2), patch_size=2)
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        UNet(patch_size=0)


def test_default_unet_costs_at_most_0_6_gflop_per_image():
    assert count_flops(UNet()) <= 0.6e9


def test_context_changes_the_prediction_and_none_means_zeros():
    torch.manual_seed(0)
    model = UNet(**TINY_UNET)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 10])
    ctx = torch.tensor([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]])
    assert not torch.allclose(model(x, t, ctx), model(x, t, None))
    assert torch.equal(model(x, t, None), model(x, t, torch.zeros(2, 5)))


def test_wrong_image_size_or_context_length_is_a_value_error():
    model = UNet(**TINY_UNET)
    with pytest.raises(ValueError, match=r"x_t must have shape \(N, 3, 16, 16\) \(or another size divisible by 2\)"):
        model(torch.randn(1, 3, 17, 17), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"x_t must have shape \(N, 3, 16, 16\)"):
        model(torch.randn(1, 1, 16, 16), torch.tensor([0]))
    assert model(torch.randn(1, 3, 8, 8), torch.tensor([0])).shape == (1, 3, 8, 8)  # fully convolutional
    with pytest.raises(ValueError, match=r"context must have shape \(N=1, 5\)"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([0]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="divisible"):
        UNet(image_size=30, channel_mults=(1, 2, 2))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("size,dtype", [(8, torch.bfloat16), (16, torch.bfloat16), (32, torch.bfloat16), (8, torch.float32)])
def test_group_norm_gives_torchs_result_and_gradients_and_keeps_channels_last(size, dtype, grad):
    torch.manual_seed(0)
    norm = GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    norm = norm.to(dtype)
    x = (3 * torch.randn(2, 16, size, size) + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = norm(x)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    x64 = x.detach().double().requires_grad_()
    w64, b64 = (p.detach().double().requires_grad_() for p in (norm.weight, norm.bias))
    exact = F.group_norm(x64, 4, w64, b64)
    tol = 0.05 if dtype == torch.bfloat16 else 1e-5
    assert (out.double() - exact).abs().max() < tol
    if grad:  # the backward of whichever kernel ran: every gradient as float64's, to the precision's tolerance
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        out.backward(upstream.to(dtype))
        exact.backward(upstream.double())
        for mine, ref in ((x.grad, x64.grad), (norm.weight.grad, w64.grad), (norm.bias.grad, b64.grad)):
            assert (mine.double() - ref).abs().max() <= 2 * tol * ref.abs().max()
