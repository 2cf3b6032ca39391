"""Label-preserving augmentation of training patches (every method).

Geometry with MONAI's batched :class:`~monai.networks.layers.AffineTransform` (rotation about each axis and an isotropic scale,
the same transform for the image and its label: bilinear for the image, nearest for the label, border
padding for both), optional flips only along axes the config declares symmetric, then intensity on the
image alone (scale, shift, Gaussian noise). The parameters are drawn from the trainer's seeded
``numpy.random.Generator``, so a run is deterministic for its seed and resumes exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.networks.layers import AffineTransform
from monai.transforms.utils import create_rotate, create_scale

from .config import AugmentConfig


def _centred(matrix: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    """``matrix`` (4, 4, voxel coordinates) about the patch centre instead of voxel 0."""
    c = (np.asarray(spatial, dtype=np.float64) - 1) / 2
    to, back = np.eye(4), np.eye(4)
    to[:3, 3], back[:3, 3] = c, -c
    return to @ matrix @ back


class Augmenter:
    """``geometry(images (B, 1, ...), labels (B, ...) | None)`` and ``intensity(images)``."""

    def __init__(self, cfg: AugmentConfig, rng: np.random.Generator):
        self.cfg = cfg
        self.rng = rng
        self._image = AffineTransform(normalized=False, mode="bilinear", padding_mode="border", align_corners=True)
        self._label = AffineTransform(normalized=False, mode="nearest", padding_mode="border", align_corners=True)

    def matrices(self, batch: int, spatial: tuple[int, ...]) -> tuple[torch.Tensor, list[list[int]]]:
        """Per sample: a (4, 4) voxel-coordinate affine (rotation and scale about the centre, identity when
        the sample is not transformed) and the axes it mirrors."""
        c = self.cfg
        mats, flips = [], []
        for _ in range(batch):
            m = np.eye(4)
            if self.rng.random() < c.prob:
                rot = [math.radians(float(self.rng.uniform(-c.rotate_degrees, c.rotate_degrees))) for _ in range(3)]
                s = float(self.rng.uniform(1 - c.scale, 1 + c.scale))
                m = _centred(create_rotate(3, rot) @ create_scale(3, (s, s, s)), spatial)
            mats.append(torch.as_tensor(m, dtype=torch.float32))
            flips.append([int(a) for a in c.flip_axes if self.rng.random() < 0.5])
        return torch.stack(mats), flips

    def geometry(self, images: torch.Tensor, labels: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each sample its own random transform, applied identically to its image and label."""
        if not self.cfg.enabled:
            return images, labels
        theta, flips = self.matrices(images.shape[0], tuple(images.shape[2:]))
        theta = theta.to(images.device)
        x = self._image(images.float(), theta)
        y = None if labels is None else self._label(labels[:, None].float(), theta)[:, 0].round().long()
        for b, axes in enumerate(flips):
            if axes:
                x[b] = x[b].flip([a + 1 for a in axes])
                if y is not None:
                    y[b] = y[b].flip(axes)
        return x, y
    def intensity(self, images: torch.Tensor) -> torch.Tensor:
        """Per sample ``x * (1 + a) + b`` plus Gaussian noise (image only; labels unchanged)."""
        c = self.cfg
        if not c.enabled:
            return images
        n = images.shape[0]
        shape = (n, *([1] * (images.dim() - 1)))
        a = torch.from_numpy(self.rng.uniform(-c.intensity_scale, c.intensity_scale, n)).float().view(shape)
        b = torch.from_numpy(self.rng.uniform(-c.intensity_shift, c.intensity_shift, n)).float().view(shape)
        out = images * (1 + a.to(images)) + b.to(images)
        if c.noise_std > 0:
            seed = int(self.rng.integers(0, 2**31 - 1))
            noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * c.noise_std
            out = out + noise.to(images)
        return out
