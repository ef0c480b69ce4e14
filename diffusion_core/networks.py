"""The denoising networks a run can train, by name: ``"unet"`` (unet.py, the shipped models' network) and
``"mp_unet"`` (unet_mp.py, EDM2's magnitude-preserving U-Net). A TrainConfig's ``network`` and a checkpoint's
config.json name one; a config.json without the key means ``"unet"``, the only network before the key."""
from __future__ import annotations

from torch import nn

from .unet import UNet
from .unet_mp import MPUNet

NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet, "mp_unet": MPUNet}


def network_class(name: str) -> type[nn.Module]:
    """The class called ``name``; a ValueError names the choices."""
    if not isinstance(name, str) or name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; networks are {sorted(NETWORKS)}")
    return NETWORKS[name]


def network_name(model: nn.Module) -> str:
    """The name of ``model``'s class (what config.json records as ``network``)."""
    for name, cls in NETWORKS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not one of the networks {sorted(NETWORKS)}")


def network_arguments(name: str) -> set[str]:
    """The constructor arguments of network ``name``: what its config.json records besides the pipeline's keys."""
    return set(network_class(name)._hub_mixin_init_parameters) - {"self"}


def build_network(name: str, **kwargs) -> nn.Module:
    """``network_class(name)(**kwargs)``."""
    return network_class(name)(**kwargs)


def lr_scales(model: nn.Module) -> list[tuple[list[nn.Parameter], float]]:
    """The parameters the network wants trained at a multiple of the lr (MPUNet's learned gains; none for a
    UNet), as ``(parameters, multiple)`` pairs for ``train.adamw_with_scaled_groups``."""
    return model.lr_scales() if isinstance(model, MPUNet) else []
