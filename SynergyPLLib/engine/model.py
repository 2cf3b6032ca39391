"""The network (a MONAI U-Net chosen by config), its feature hook, devices and checkpoints.

A checkpoint (``model.pt``) is a plain dict that carries everything needed to use the model alone:
the engine config (classes, preprocessing, inference settings), the weights, the calibration
temperature, the reference patches for mixed views and the class statistics.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from .config import EngineConfig, ModelConfig

CHECKPOINT_FORMAT = 1


def build_network(cfg: ModelConfig, out_channels: int, in_channels: int = 1) -> nn.Module:
    """A 3D MONAI network with ``out_channels`` logits per voxel."""
    if cfg.network == "unet":
        return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                    channels=tuple(cfg.channels), strides=tuple(cfg.strides),
                    num_res_units=cfg.num_res_units, dropout=cfg.dropout)
    if cfg.network == "basicunet":
        c = tuple(cfg.channels)
        features = (c[0], c[0], *c[1:], *([c[-1]] * (5 - len(c))), c[0])[:6]
        return BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                         features=features, dropout=cfg.dropout)
    raise ValueError(f"unknown network {cfg.network!r}; choose unet or basicunet")


def feature_layer(net: nn.Module) -> nn.Module:
    """The last layer; its input is the full-resolution feature map used for class prototypes."""
    if isinstance(net, UNet):
        return net.model[-1]
    if isinstance(net, BasicUNet):
        return net.final_conv
    raise TypeError(f"no feature layer known for {type(net).__name__}")


class FeatureHook:
    """Captures the input of :func:`feature_layer` on every forward pass (``.features``: B, F, ...)."""

    def __init__(self, net: nn.Module):
        self.features: torch.Tensor | None = None
        self._handle = feature_layer(net).register_forward_hook(self._grab)

    def _grab(self, module, inputs, output) -> None:
        self.features = inputs[0]

    def remove(self) -> None:
        self._handle.remove()


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device: str | None = None) -> str:
    """A person-readable device name: the GPU's model or ``CPU (N threads)``."""
    device = device or default_device()
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """Write with torch.save to a temp file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``model.pt``; raises ValueError naming the file when it is not a SynergyPL checkpoint."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a SynergyPL model checkpoint")
    return ckpt


def network_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, EngineConfig]:
    """Rebuild the network and config stored in a checkpoint dict."""
    cfg = EngineConfig.from_dict(ckpt["config"])
    net = build_network(cfg.model, cfg.num_classes)
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    return net, cfg
