"""Datasets, preprocessing and patch sampling.

- :func:`load_decathlon` reads a Medical Segmentation Decathlon folder (``dataset.json``,
  ``imagesTr/``, ``labelsTr/``) into class names and :class:`CaseSpec` records.
- :class:`Preprocessor` brings a :class:`~SynergyPLLib.engine.io.Volume` to the network's grid and
  intensity range with MONAI transforms, and maps network outputs back to the original grid.
- :func:`load_cases` reads and preprocesses cases once, checking every label against its image.
- :class:`PatchSampler` draws random training patches (foreground-centred for labeled cases).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    NormalizeIntensity,
    Orientation,
    ScaleIntensityRangePercentiles,
    Spacing,
)

from .config import PreprocessConfig
from .decathlon import read_decathlon
from .io import Volume, check_label, read_volume


@dataclass
class CaseSpec:
    """One case on disk: an image and, when labeled, its label map."""

    id: str
    image: Path
    label: Path | None = None


@dataclass
class LoadedCase:
    """A case after preprocessing: ``image`` (1, I, J, K) float32 and ``label`` (I, J, K) uint8 or None."""

    id: str
    image: np.ndarray
    label: np.ndarray | None
    volume: Volume  # the original grid's geometry (its array is a zero-strided placeholder)


def load_decathlon(folder: str | Path) -> tuple[list[str], list[CaseSpec]]:
    """Class names (index order, background first) and labeled cases of a Decathlon folder
    (read by :func:`.decathlon.read_decathlon`, the one reader)."""
    ds = read_decathlon(folder)
    return ds.classes, [CaseSpec(c.case_id, c.image, c.label) for c in ds.training]


def axcodes_of(direction) -> str:
    """The patient axis each voxel axis runs toward (e.g. "RAS", "LPS") for an ITK/LPS direction matrix.

    The same nearest-axis rule as MONAI's ``Orientation`` (nibabel's ``io_orientation``), so two images with
    equal codes are given to the network in the same voxel order.
    """
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(direction, dtype=float).reshape(3, 3)
    return "".join(nib.aff2axcodes(affine))


class Preprocessor:
    """Orientation, spacing and intensity normalisation (MONAI), invertible for spatial outputs.

    With ``orientation`` set (the default, "RAS") every image reaches the network in that voxel order,
    whatever order its file stores, and ``invert`` brings outputs back to the file's own order and grid.

    ``image(vol)`` returns a MetaTensor (1, I', J', K'); ``label(vol)`` the matching label grid;
    ``invert(tensor, like)`` maps a (C, I', J', K') output back onto the original voxel grid.
    """

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg
        self._spatial_image = self._spatial(cfg, "bilinear")
        self._spatial_label = self._spatial(cfg, "nearest")
        if cfg.intensity == "zscore":
            self._intensity = NormalizeIntensity(nonzero=False, channel_wise=True)
        elif cfg.intensity == "percentile":
            lo, hi = cfg.percentiles
            self._intensity = ScaleIntensityRangePercentiles(lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)
        elif cfg.intensity == "none":
            self._intensity = None
        else:
            raise ValueError(f"unknown intensity normalisation {cfg.intensity!r}")

    @staticmethod
    def _spatial(cfg: PreprocessConfig, mode: str) -> Compose | None:
        steps = []
        if cfg.orientation:
            # labels: the MetaTensor's affine is RAS (see _meta), so "RAS" means what it says
            steps.append(Orientation(axcodes=cfg.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
        if cfg.spacing:
            steps.append(Spacing(pixdim=cfg.spacing, mode=mode))
        return Compose(steps) if steps else None

    @property
    def is_identity_grid(self) -> bool:
        return self._spatial_image is None

    @staticmethod
    def _meta(array: np.ndarray, vol: Volume) -> MetaTensor:
        return MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(vol.ijk_to_ras))

    def image(self, vol: Volume) -> MetaTensor:
        x = self._meta(vol.array.astype(np.float32, copy=False), vol)
        if self._spatial_image is not None:
            x = self._spatial_image(x)
        if self._intensity is not None:
            x = self._intensity(x)
        return x

    def label(self, vol: Volume) -> torch.Tensor:
        y = self._meta(vol.array.astype(np.float32), vol)
        if self._spatial_label is not None:
            y = self._spatial_label(y)
        return y

    def invert(self, output: torch.Tensor, like: MetaTensor) -> torch.Tensor:
        """Map a network-grid output (C, I', J', K') back to the grid ``like`` was made from."""
        if self._spatial_image is None:
            return output.as_tensor() if isinstance(output, MetaTensor) else output
        out = MetaTensor(output.detach().cpu().float(), affine=like.affine.clone())
        out.applied_operations = [dict(op) for op in like.applied_operations]
        out = self._spatial_image.inverse(out)
        return out.as_tensor()


def load_cases(specs: Iterable[CaseSpec], pre: Preprocessor, num_classes: int, *, labeled: bool = True,
               progress: bool = False) -> list[LoadedCase]:
    """Read and preprocess cases; labels (when ``labeled``) are validated against their images."""
    specs = list(specs)
    it = specs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(specs, desc="loading", unit="case", leave=False)
    out = []
    for spec in it:
        vol = read_volume(spec.image)
        image = pre.image(vol)
        label = None
        if labeled and spec.label is not None:
            lab = check_label(read_volume(spec.label, allow_constant=True), vol, num_classes, str(spec.label))
            label = pre.label(lab).as_tensor()[0].round().numpy().astype(np.uint8)
        # geometry only: a zero-strided array keeps the shape without holding the voxels
        header = Volume(np.broadcast_to(np.uint8(0), vol.shape), vol.spacing, vol.origin, vol.direction, vol.source)
        out.append(LoadedCase(spec.id, image.as_tensor().numpy().astype(np.float32), label, header))
    return out


def _pad_to(array: np.ndarray, size: tuple[int, ...], value: float) -> np.ndarray:
    """Pad the last 3 axes symmetrically up to ``size``."""
    pads = [(0, 0)] * (array.ndim - 3)
    for dim, target in zip(array.shape[-3:], size, strict=True):
        extra = max(0, target - dim)
        pads.append((extra // 2, extra - extra // 2))
    if all(p == (0, 0) for p in pads):
        return array
    return np.pad(array, pads, mode="constant", constant_values=value)


class PatchSampler:
    """Random patches of ``patch_size`` from preprocessed cases.

    Labeled draws are foreground-centred with probability ``pos_fraction`` (as MONAI's
    RandCropByPosNegLabel), otherwise uniform; unlabeled draws are uniform. Volumes smaller than a patch
    are padded (image with its minimum, label with background).
    """

    def __init__(self, cases: list[LoadedCase], patch_size: tuple[int, int, int], rng: np.random.Generator,
                 pos_fraction: float = 0.5):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        self.patch = tuple(patch_size)
        self.rng = rng
        self.pos_fraction = pos_fraction
        self.images = [_pad_to(c.image, self.patch, float(c.image.min())) for c in cases]
        self.labels = [None if c.label is None else _pad_to(c.label, self.patch, 0) for c in cases]
        self.foreground = [None if lab is None else np.argwhere(lab > 0) for lab in self.labels]
        self.ids = [c.id for c in cases]
        self.last_ids: list[str] = []  # the cases of the last draw (distributed-training test hook)

    def __len__(self) -> int:
        return len(self.images)

    def _corner(self, shape, centre=None):
        corner = []
        for d, (dim, p) in enumerate(zip(shape, self.patch, strict=True)):
            hi = dim - p
            if centre is None:
                corner.append(int(self.rng.integers(0, hi + 1)))
            else:
                corner.append(int(np.clip(centre[d] - p // 2, 0, hi)))
        return corner

    def sample(self, n: int, indices: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` patches: images (n, 1, *patch) and labels (n, *patch) long, or None if unlabeled.

        The cases are drawn at random, or are ``indices`` when given (a rank's shard, see engine.distributed).
        """
        idx = self.rng.integers(0, len(self.images), size=n) if indices is None else indices
        self.last_ids = [self.ids[i] for i in idx]
        xs, ys = [], []
        for i in idx:
            img, lab, fg = self.images[i], self.labels[i], self.foreground[i]
            centre = None
            if fg is not None and len(fg) and self.rng.random() < self.pos_fraction:
                centre = fg[self.rng.integers(0, len(fg))]
            c = self._corner(img.shape[-3:], centre)
            sl = tuple(slice(c[d], c[d] + self.patch[d]) for d in range(3))
            xs.append(img[(slice(None),) + sl])
            if lab is not None:
                ys.append(lab[sl])
        x = torch.from_numpy(np.stack(xs)).float()
        y = torch.from_numpy(np.stack(ys)).long() if len(ys) == n else None
        return x, y

    def foreground_patches(self, k: int) -> list[np.ndarray]:
        """``k`` image patches centred on foreground, for mixing views at inference (1, *patch) each."""
        out = []
        for i in range(k):
            j = i % len(self.images)
            fg = self.foreground[j]
            centre = fg[len(fg) // 2] if fg is not None and len(fg) else None
            c = self._corner(self.images[j].shape[-3:], centre)
            sl = tuple(slice(c[d], c[d] + self.patch[d]) for d in range(3))
            out.append(self.images[j][(slice(None),) + sl].copy())
        return out
