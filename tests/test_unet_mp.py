"""EDM2's magnitude-preserving U-Net (unet_mp.py): its layers keep magnitude 1, forced weight normalisation
keeps every stored weight at unit norm, the untrained network predicts 0, it takes UNet's inputs with UNet's
errors, and it trains, exports and loads by name (networks.py) beside UNet."""
import json
from pathlib import Path

import pytest
import torch

from diffusion_core.networks import build_network, network_class
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.train import TrainConfig, text_parameters, train, training_optimizer
from diffusion_core.unet import UNet
from diffusion_core.unet_mp import MPConv, MPUNet, mp_cat, mp_silu, mp_sum, pixel_norm

from conftest import TINY_LABELS, TINY_STYLES, TINY_UNET, tiny_train_config

TINY_MP = {k: v for k, v in TINY_UNET.items() if k != "num_groups"}


def rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking weights: the zero-started gains and vectors made non-zero, so every input matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_the_fixed_function_layers_and_mpconv_keep_unit_magnitude():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 64, 32, 32, generator=g).unbind(0)
    assert rms(mp_silu(a)) == pytest.approx(1, abs=0.02)
    for t in (0.3, 0.5, 0.8):
        assert rms(mp_sum(a, b, t)) == pytest.approx(1, abs=0.02)
    cat = mp_cat(a[None, :16], b[None, :48], t=0.3)  # unequal widths: each part scaled by its own
    assert cat.shape == (1, 64, 32, 32) and rms(cat) == pytest.approx(1, abs=0.02)
    assert rms(cat[:, :16]) / rms(cat[:, 16:]) == pytest.approx(0.7 / 0.3 * (48 / 16) ** 0.5, rel=0.05)
    per_pixel = pixel_norm(3 * a[None] + 1).pow(2).mean(dim=1).sqrt()
    assert torch.allclose(per_pixel, torch.ones_like(per_pixel), atol=1e-3)
    torch.manual_seed(0)
    conv, linear = MPConv(64, 32, (3, 3)), MPConv(64, 128)
    assert rms(conv(a[None])) == pytest.approx(1, abs=0.1)  # the zero padding's border counts a little less
    assert rms(linear(a.flatten(1).T)) == pytest.approx(1, abs=0.05)


def test_forced_weight_normalisation_keeps_each_stored_output_channel_at_unit_norm():
    torch.manual_seed(0)
    layer = MPConv(8, 4, (3, 3))
    x = torch.randn(2, 8, 6, 6)

    def row_norms():
        return layer.weight.detach().flatten(1).norm(dim=1)

    unit = torch.ones(4)  # to within ε = 1e-4 of w / (ε + ‖w‖)
    assert torch.allclose(row_norms(), unit, atol=1e-3)
    before = layer(x).detach()
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([3.0, 0.5, 2.0, 7.0])[:, None, None, None])
    assert torch.allclose(layer(x), before, atol=1e-5)  # weight normalisation: the output ignores the norm
    assert torch.allclose(row_norms(), unit, atol=1e-3)  # and training mode put it back to 1
    out = layer(x)
    (out + layer(x)).pow(2).mean().backward()  # two calls in one step: the second leaves the weight alone
    with torch.no_grad():  # an optimiser's step, Adam-like: lr·sign(g) (torch.optim's first import takes 1.5 s)
        layer.weight.sub_(0.1 * layer.weight.grad.sign())
    assert not torch.allclose(row_norms(), unit, atol=1e-2)  # the step moved the norms ...
    layer(x)
    assert torch.allclose(row_norms(), unit, atol=1e-3)  # ... and the next training call restored them
    with torch.no_grad():
        layer.weight.mul_(2.0)
    layer.eval()(x)
    layer.train()
    with torch.no_grad():
        layer(x)  # drawing from a model in training mode
    layer.requires_grad_(False)(x)  # an EMA copy: no gradients, so nothing to normalise
    assert torch.allclose(row_norms(), 2 * unit, atol=2e-3)


def test_the_untrained_network_predicts_exactly_zero_and_learns_through_its_gains():
    torch.manual_seed(0)
    model = MPUNet(**TINY_MP)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    out = model(x, t, torch.eye(5)[:2])
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    out.sub(torch.randn_like(out)).pow(2).mean().backward()
    assert model.conv_out.gain.grad.abs() > 0


def test_it_keeps_unit_magnitude_through_the_network():
    model = MPUNet(**{**TINY_MP, "channel_mults": (1, 2, 2)})
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, MPConv) and layer.gain is not None:
                layer.gain.fill_(1.0)
    seen = {}
    for name, block in [*model.down.named_children(), *(("mid" + n, b) for n, b in model.mid.named_children())]:
        block.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, rms(o)))
    model(torch.randn(4, 3, 16, 16), torch.tensor([0, 10, 500, 999]), torch.eye(5)[:4])
    assert len(seen) == 7 and all(0.7 < v < 1.5 for v in seen.values()), seen


def test_every_size_the_levels_divide_runs_and_patches_work():
    model = randomised(MPUNet(**{**TINY_MP, "channel_mults": (1, 2, 2)}))
    for size in (4, 8, 16, 32):  # a resolution curriculum draws smaller than it was built for
        assert model(torch.randn(1, 3, size, size), torch.tensor([5])).shape == (1, 3, size, size)
    patched = randomised(MPUNet(**{**TINY_MP, "patch_size": 2}))
    assert patched.conv_in.weight.shape[1] == 4 * 3 + 1  # 2x2 patches' pixels as channels, and the ones
    assert patched(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="divisible by patch_size x 2\\^1 = 4"):
        MPUNet(image_size=18, channel_mults=(1, 2), patch_size=2)


BAD_INPUTS = [  # (model settings, forward arguments given to both networks)
    ({}, dict(x=torch.randn(1, 3, 17, 17))),
    ({}, dict(x=torch.randn(1, 1, 16, 16))),
    ({}, dict(context=torch.zeros(1, 4))),
    ({}, dict(tokens=torch.zeros(1, 6, dtype=torch.long))),
    ({}, dict(guidance=torch.ones(1))),
    ({}, dict(flipped=torch.zeros(1))),
    ({"flip_condition": True}, dict(flipped=torch.zeros(2))),
    ({"guidance_embedding": True}, dict()),
    ({"vocab_size": 8, "text_dim": 16, "max_tokens": 6}, dict(tokens=torch.zeros(1, 6))),
    ({"vocab_size": 8, "text_dim": 16, "max_tokens": 6}, dict(tokens=torch.zeros(1, 5, dtype=torch.long))),
]


@pytest.mark.parametrize("settings,arguments", BAD_INPUTS, ids=[f"case{i}" for i in range(len(BAD_INPUTS))])
def test_bad_inputs_raise_unets_errors_word_for_word(settings, arguments):
    messages = []
    for cls, base in ((UNet, TINY_UNET), (MPUNet, TINY_MP)):
        model = cls(**{**base, **settings})
        call = {"x": torch.randn(1, 3, 16, 16), "t": torch.tensor([3]), **arguments}
        with pytest.raises(ValueError) as err:
            model(**call)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_context_tokens_guidance_and_flips_each_change_the_prediction_and_none_means_zero():
    model = randomised(MPUNet(**{**TINY_MP, "vocab_size": 8, "text_dim": 16, "max_tokens": 6, "flip_condition": True}))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 10])
    ctx, tokens = torch.eye(5)[:2], torch.tensor([[2, 5, 6, 0, 0, 0], [2, 7, 0, 0, 0, 0]])
    with torch.no_grad():
        plain = model(x, t)
        nothing = model(x, t, torch.zeros(2, 5), torch.zeros(2, 6, dtype=torch.long), flipped=torch.zeros(2))
        assert torch.equal(plain, nothing)
        for changed in (model(x, t, ctx), model(x, t, tokens=tokens), model(x, t, flipped=torch.ones(2))):
            assert not torch.allclose(changed, plain)
    student = randomised(MPUNet(**{**TINY_MP, "guidance_embedding": True}))
    with torch.no_grad():
        assert not torch.allclose(student(x, t, guidance=torch.ones(2)), student(x, t, guidance=torch.full((2,), 5.0)))


def test_a_distilled_students_guidance_input_starts_at_zero_so_it_starts_as_its_teacher():
    from diffusion_core.distill import student_of

    teacher = DiffusionPipeline(randomised(MPUNet(**{**TINY_MP, "flip_condition": True})), NoiseSchedule("cosine", 50),
                                TINY_LABELS, TINY_STYLES, device="cpu")
    student = student_of(teacher)
    assert isinstance(student, MPUNet) and not student.flip_condition
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([3, 40]), torch.eye(5)[:2]
    with torch.no_grad():
        expected = teacher.model.to(memory_format=torch.contiguous_format)(x, t, c)
        for w in (1.0, 6.0):
            assert torch.allclose(student(x, t, c, guidance=torch.full((2,), w)), expected, atol=1e-6)


def test_an_mp_teacher_distils_into_an_mp_student(course_files, tmp_path):
    from diffusion_core.distill import distill

    from conftest import COURSE_LABELS, tiny_distill_config

    teacher = DiffusionPipeline(randomised(MPUNet(**TINY_MP)), NoiseSchedule("cosine", 50), COURSE_LABELS, [],
                                device="cpu").save_pretrained(tmp_path / "teacher")
    cfg = tiny_distill_config(teacher, course_files, tmp_path, "student", objective="guidance", max_steps=2)
    assert distill(cfg, show_progress=False)["step"] == 2
    student = DiffusionPipeline.from_pretrained(cfg.export_dir)
    assert isinstance(student.model, MPUNet) and student.guidance_distilled


def test_the_text_path_of_an_mp_unet_is_its_encoder_its_projection_and_its_cross_attention():
    model = MPUNet(**{**TINY_MP, "vocab_size": 8, "text_dim": 16, "max_tokens": 6})
    chosen = {id(p) for p in text_parameters(model)}
    names = [n for n, p in model.named_parameters() if id(p) in chosen]
    assert names and all(n.startswith(("text_encoder.", "text_mlp.")) or ".cross." in n for n in names)
    assert any(".cross." in n for n in names)


def test_an_mp_unet_trains_exports_and_loads_as_an_mp_unet(course_files, tmp_path):
    cfg = tiny_train_config(tmp_path, "mp", data=course_files, image_size=16, channel_mults=[1, 2],
                            attention_resolutions=[8], network="mp_unet", curriculum_size=8, curriculum_steps=3,
                            precision="bf16")
    assert "num_groups" not in cfg.unet_kwargs(5)  # no GroupNorm to give them to
    assert train(cfg, show_progress=False)["step"] == 6
    config = json.loads((Path(cfg.export_dir) / "config.json").read_text())
    assert config["network"] == "mp_unet" and "num_groups" not in config
    pipe = DiffusionPipeline.from_pretrained(cfg.export_dir)
    assert isinstance(pipe.model, MPUNet) and pipe.labels == ["hero", "non-hero", "food", "spell", "side-facing"]
    assert not torch.equal(pipe.model.conv_out.gain, torch.zeros(()))  # six steps moved the output gain off 0
    images = pipe.generate(num_images=2, classes=["food"], sampler="ddim", steps=3).images
    assert images.shape == (2, 16, 16, 3) and images.std() > 0
    assert "magnitude-preserving U-Net" in (Path(cfg.export_dir) / "README.md").read_text()
    # fine-tuning must keep the network; the other network is a clear error
    with pytest.raises(ValueError, match=r"different architecture .*network"):
        train(tiny_train_config(tmp_path, "as_unet", data=course_files, image_size=16, channel_mults=[1, 2],
                                attention_resolutions=[8], init_from=cfg.export_dir), show_progress=False)


def test_a_config_json_without_network_is_a_unet_and_unknown_names_are_clear_errors(tiny_pipeline, tmp_path):
    folder = tiny_pipeline.save_pretrained(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    assert config["network"] == "unet"
    del config["network"]  # a checkpoint from before the key
    (folder / "config.json").write_text(json.dumps(config))
    assert type(DiffusionPipeline.from_pretrained(folder).model) is UNet
    (folder / "config.json").write_text(json.dumps({**config, "network": "resnet"}))
    with pytest.raises(ValueError, match=r"unknown network 'resnet'; networks are \['mp_unet', 'unet'\]"):
        DiffusionPipeline.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "network": "mp_unet"}))  # num_groups is not MPUNet's
    with pytest.raises(ValueError, match=r"unknown keys \['num_groups'\]"):
        DiffusionPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"network must be one of \['mp_unet', 'unet'\], got 'resnet'"):
        TrainConfig(network="resnet").validate()
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        build_network("resnet")
    assert network_class("mp_unet") is MPUNet


def test_the_mp_experiment_is_the_curriculum_recipe_on_the_other_network():
    root = Path(__file__).resolve().parent.parent / "configs" / "experiments"
    base, mp = (json.loads((root / f"{name}.json").read_text()) for name in ("emoji32_cpu_curriculum",
                                                                              "emoji32_cpu_mp_curriculum"))
    differs = {k for k in {*base, *mp} if base.get(k) != mp.get(k)}
    assert differs == {"network", "out_dir", "export_dir"} and mp["network"] == "mp_unet"
    assert mp["out_dir"] == "runs/emoji32_cpu_mp_curriculum" and mp["export_dir"].startswith(mp["out_dir"] + "/")
    cfg = TrainConfig(**mp)
    cfg.validate()
    sizes = {name: sum(p.numel() for p in build_network(name, **TrainConfig(**{**mp, "network": name}).unet_kwargs(
        13, 500)).parameters()) for name in ("unet", "mp_unet")}
    assert 1.0 < sizes["mp_unet"] / sizes["unet"] < 1.1  # comparable: EDM2's resampling blocks add a few percent


def test_the_gains_learn_at_their_layers_alpha_and_a_unet_has_no_such_groups():
    """A gain is a scalar that Adam moves by at most lr a step: it gets its layer's α = lr·√N_in, so the output
    gain can reach 1 within the warm-up (at the plain lr it stood at 0.04 after 500 steps)."""
    cfg = TrainConfig(network="mp_unet", base_channels=8, num_heads=2, channel_mults=[1, 2], attention_resolutions=[8],
                      image_size=16)
    model = build_network("mp_unet", **cfg.unet_kwargs(5))
    scale_of = {id(p): group.get("lr_scale", 1.0) for group in training_optimizer(model, cfg).param_groups
                for p in group["params"]}
    assert scale_of[id(model.conv_out.gain)] == pytest.approx((8 * 9) ** 0.5)      # fan-in 8 channels x 3x3
    assert scale_of[id(model.down[0].emb_linear.gain)] == pytest.approx(32 ** 0.5)  # the embedding's 4 x 8
    assert scale_of[id(model.conv_out.weight)] == 1.0 and len(scale_of) == len(list(model.parameters()))
    unet = build_network("unet", **TrainConfig(base_channels=8, num_heads=2, num_groups=4).unet_kwargs(5))
    assert len(training_optimizer(unet, TrainConfig()).param_groups) == 1
