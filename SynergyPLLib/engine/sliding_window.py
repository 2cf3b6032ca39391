"""Sliding-window logits with MONAI's inferer: AMP on CUDA, plain float32 on CPU."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn


class WindowPredictor:
    """Callable ``(1, 1, I, J, K) image -> (1, C, I, J, K) logits`` over Gaussian-weighted windows.

    Inputs smaller than a window are padded by MONAI and cropped back.
    """

    def __init__(self, net: nn.Module, roi_size, overlap: float = 0.25, sw_batch_size: int = 2,
                 device: str = "cpu"):
        self.net = net
        self.device = torch.device(device)
        self.inferer = SlidingWindowInferer(roi_size=tuple(roi_size), sw_batch_size=sw_batch_size,
                                            overlap=overlap, mode="gaussian", progress=False)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        amp = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else nullcontext()
        with amp:
            logits = self.inferer(image.to(self.device), self.net)
        return logits.float()

    def probabilities(self, image: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Softmax of the logits divided by ``temperature`` (calibration)."""
        return torch.softmax(self(image) / temperature, dim=1)
