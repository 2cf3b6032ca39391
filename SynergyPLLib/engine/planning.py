"""Dataset-aware planning, as nnU-Net plans from a dataset fingerprint.

:func:`fingerprint` reads a Decathlon folder (through :func:`.decathlon.read_decathlon`, the one reader)
with SimpleITK: every header (spacing, shape, in the network's voxel order, i.e. after the RAS
re-orientation of :class:`.data.Preprocessor`), and from up to ``max_volumes`` cases (evenly spaced, so
the sample is deterministic) the image intensities inside the labeled foreground and the voxel frequency
of every class. :func:`plan` turns it into a :class:`Plan` for a profile:

- **working spacing**: the median spacing per axis. When the median shape at that spacing holds more
  voxels than the profile's grid budget (``GRID_VOXELS``), the fine axes (those with less than a third of
  the coarsest axis' spacing; all axes for an isotropic set) are coarsened together, never beyond the
  coarsest axis, until the median grid fits. A spacing equal to every case's own (within 1%) is
  written as ``None``: the images are used on their own grid, as the engine does without a spacing.
- **patch size**: per axis the median shape at the working spacing (along the through-plane axis of an
  anisotropic set, those with ``ANISOTROPY`` times the finest spacing, the smallest case's: few slices,
  and padding across them wastes the most), floored to a multiple of the network's total stride;
  while it holds more voxels than ``PATCH_VOXELS[profile]`` the largest axis loses one stride.
- **resolution** (nnU-Net's 3d_lowres idea): when the full-resolution patch sees less than a quarter of
  the median case, there is a second candidate, ``resolution="low"`` (:func:`lowres_spacing`: coarser
  until the patch sees half of it). :func:`resolutions` lists the candidates; which one a dataset uses is
  chosen on validation (harness/resolution.py), never here.
- **batch**: as many patches per side (labeled / unlabeled) as fill ``STEP_VOXELS[profile]``, 2..8.
- **iterations**: ``gpu``: the profile's full schedule. ``cpu``: as many as the time budget holds, in
  steps of the validation interval: the estimated training time of one run of the costliest method stays
  within ``CPU_BUDGET_SECONDS`` (8 minutes on 2 cores) minus a 15% margin, and the count lies between one
  validation interval and ``MAX_SCHEDULE_FACTOR`` times the profile's schedule. Filling the budget matters:
  on left_atrium (4 labeled, validation Dice, mean of 3 subsets) supervised training went from 0.731 at
  600 iterations to 0.798 at 1200, and at 600 no method could use more labels than 4 (on test, ``full``
  with 56 labeled tied ``supervised``).

The time estimate is a per-voxel cost model measured on this project's 2-core CPU machine:
``CPU_SECONDS_PER_VOXEL`` seconds per iteration per patch voxel in the batch (labeled + unlabeled) for
``synergypl``/``sgrs`` (the costliest steps: teacher and student forward passes on the plain and the
mixed views, one backward), from the v2 benchmark's synergypl runs on a quiet machine (hippocampus
32x48x32, left_atrium 40x40x40 and chaos_mr 48x56x24, batch 2+2: 1.25e-6 to 1.7e-6 s per voxel with
validation every 50 iterations), and
``CPU_SECONDS_PER_INFERENCE_VOXEL`` for one sliding-window pass over the validation cases (each
validation, and the final calibration and heatmap-weight choice, counted as ``FINAL_PASSES`` passes).
:func:`timed_seconds_per_iteration` measures the same quantity with a timed forward/backward of the real
network on the planned patch, for a machine the constants do not describe.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import DEFAULT_WARMUP, EngineConfig, profile_config
from .decathlon import read_decathlon

CPU_BUDGET_SECONDS = 480.0  # BENCHMARK.md: one run of one method <= 8 minutes on 2 CPU cores
BUDGET_MARGIN = 0.15
CPU_SECONDS_PER_VOXEL = 1.5e-6  # per iteration, per patch voxel of the batch (labeled + unlabeled)
MAX_SCHEDULE_FACTOR = 2  # the cpu plan runs at most this many times the profile's schedule
CPU_SECONDS_PER_INFERENCE_VOXEL = 5e-7  # one sliding-window forward pass, per voxel of the case grid
FINAL_PASSES = 6  # calibration + heatmap mixing weight on validation, in validation passes
STEP_FACTOR = 2.2  # a synergy step / one forward+backward of the batch (for the timed estimate)
GRID_VOXELS = {"cpu": 400_000, "gpu": 8_000_000}
PATCH_VOXELS = {"cpu": 65_536, "gpu": 262_144}
STEP_VOXELS = {"cpu": 98_304, "gpu": 1_048_576}
ANISOTROPY = 3.0
# nnU-Net's rule for a low-resolution configuration: there is one when the full-resolution patch sees less than
# a quarter of the median case. Ours coarsens until the patch sees half of it, at most twice as coarse.
LOWRES_TRIGGER = 0.25
LOWRES_COVERAGE = 0.5
LOWRES_MAX_FACTOR = 2.0
RESOLUTIONS = ("full", "low")
_RAS = ("LR", "PA", "IS")


@dataclass
class Fingerprint:
    """What planning needs to know about a dataset (axes in the network's voxel order, RAS)."""

    name: str
    classes: list[str]
    cases: int
    labeled_cases: int
    spacings: list[list[float]]  # per case, mm
    shapes: list[list[int]]  # per case, voxels
    sampled_cases: int = 0
    intensity: dict[str, float] = field(default_factory=dict)  # mean, std, p00_5, p99_5 in the foreground
    class_frequency: dict[str, float] = field(default_factory=dict)  # voxel share of each class

    @property
    def median_spacing(self) -> list[float]:
        return [float(v) for v in np.median(np.asarray(self.spacings), axis=0)]

    @property
    def median_shape(self) -> list[float]:
        return [float(v) for v in np.median(np.asarray(self.shapes), axis=0)]

    def summary(self) -> dict:
        """The short form written into results.json (no per-case lists)."""
        sp, sh = np.asarray(self.spacings), np.asarray(self.shapes)
        return {"name": self.name, "cases": self.cases, "labeled_cases": self.labeled_cases,
                "sampled_cases": self.sampled_cases,
                "median_spacing": [round(v, 4) for v in self.median_spacing],
                "median_shape": self.median_shape,
                "min_shape": [int(v) for v in sh.min(0)], "max_shape": [int(v) for v in sh.max(0)],
                "spacing_range": [[round(float(v), 4) for v in sp.min(0)], [round(float(v), 4) for v in sp.max(0)]],
                "intensity": {k: round(v, 4) for k, v in self.intensity.items()},
                "class_frequency": {k: round(v, 6) for k, v in self.class_frequency.items()}}


@dataclass
class Plan:
    """Working spacing, patch, batch and iterations for one dataset and profile."""

    profile: str
    spacing: list[float] | None  # mm, network voxel order; None: each image's own grid
    patch_size: list[int]
    batch_labeled: int
    batch_unlabeled: int
    iterations: int
    val_every: int
    grid_shape: list[int]  # the median case at the working spacing
    seconds_per_iteration: float | None
    estimated_train_seconds: float | None
    budget_seconds: float | None
    fingerprint: dict = field(default_factory=dict)
    resolution: str = "full"  # "low": the working spacing coarsened for context (:func:`lowres_spacing`)
    # the warm-start share of the methods that warm-start (config.DEFAULT_WARMUP's), when one was chosen for
    # this dataset on validation (``bench --warmup``, from the ablation table); None: their defaults
    warmup_fraction: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def apply(self, cfg: EngineConfig) -> EngineConfig:
        """Write the plan into an engine config (spacing, patch, batch, iterations, and the warm start when the
        plan has one and ``cfg``'s method warm-starts: sgrs stays as published); returns ``cfg``."""
        cfg.preprocess.spacing = tuple(self.spacing) if self.spacing else None
        cfg.train.patch_size = tuple(self.patch_size)
        cfg.train.batch_labeled = self.batch_labeled
        cfg.train.batch_unlabeled = self.batch_unlabeled
        cfg.train.iterations = self.iterations
        cfg.train.val_every = self.val_every
        if self.warmup_fraction is not None and cfg.train.method in DEFAULT_WARMUP:
            cfg.train.warmup_fraction = float(self.warmup_fraction)
        return cfg


# what a plan recorded before these fields existed meant by leaving them out
PLAN_FIELD_DEFAULTS = {"resolution": "full", "warmup_fraction": None}
# measured on this machine, not chosen: an earlier plan's timing estimate may differ from today's
PLAN_NOT_COMPARED = ("estimated_train_seconds", "seconds_per_iteration")


def comparable_plan(plan: dict) -> dict:
    """A recorded plan (:meth:`Plan.to_dict`, perhaps written before some fields existed) as two are compared
    to tell whether they planned the same: the later fields' defaults filled in (``PLAN_FIELD_DEFAULTS``), the
    measured timings left out, in JSON form (tuples as lists)."""
    kept = {k: v for k, v in plan.items() if k not in PLAN_NOT_COMPARED}
    return json.loads(json.dumps({**PLAN_FIELD_DEFAULTS, **kept}))


def _ras_order(direction) -> list[int]:
    """For each RAS axis, the file's voxel axis that runs along it (the nearest-axis rule of MONAI)."""
    from .data import axcodes_of

    codes = axcodes_of(direction)
    return [next(i for i, c in enumerate(codes) if c in pair) for pair in _RAS]


def _sample(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})


def fingerprint(folder: str | Path, max_volumes: int = 40) -> Fingerprint:
    """Headers of every training case, intensities and class frequencies of up to ``max_volumes``."""
    import SimpleITK as sitk

    ds = read_decathlon(folder, missing_labels_ok=True)
    spacings, shapes = [], []
    for case in ds.training:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.image))
        reader.ReadImageInformation()
        order = _ras_order(reader.GetDirection())
        spacings.append([float(reader.GetSpacing()[i]) for i in order])
        shapes.append([int(reader.GetSize()[i]) for i in order])
    labeled = [c for c in ds.training if c.label is not None]
    counts = np.zeros(len(ds.classes), dtype=np.int64)
    fg_values = []
    rng = np.random.default_rng(0)
    for i in _sample(len(labeled), max_volumes):
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(labeled[i].label))).astype(np.int64)
        counts += np.bincount(lab.ravel(), minlength=len(ds.classes))[: len(ds.classes)]
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(labeled[i].image), sitk.sitkFloat32))
        vals = img[lab > 0]
        if vals.size > 10_000:
            vals = rng.choice(vals, 10_000, replace=False)
        fg_values.append(np.asarray(vals, dtype=np.float64))
    intensity = {}
    if fg_values and sum(v.size for v in fg_values):
        v = np.concatenate(fg_values)
        intensity = {"mean": float(v.mean()), "std": float(v.std()), "p00_5": float(np.percentile(v, 0.5)),
                     "p99_5": float(np.percentile(v, 99.5))}
    total = max(1, int(counts.sum()))
    return Fingerprint(name=ds.name, classes=list(ds.classes), cases=len(ds.training), labeled_cases=len(labeled),
                       spacings=spacings, shapes=shapes, sampled_cases=min(len(labeled), max_volumes),
                       intensity=intensity,
                       class_frequency={c: float(n) / total for c, n in zip(ds.classes, counts, strict=True)})


def working_spacing(fp: Fingerprint, grid_voxels: int) -> list[float]:
    """Median spacing, the fine axes coarsened together until the median case fits ``grid_voxels``."""
    spacing = np.asarray(fp.median_spacing, dtype=float)
    extent = spacing * np.asarray(fp.median_shape)  # mm
    coarse = spacing.max()
    fine = spacing < coarse / ANISOTROPY
    if not fine.any():
        fine = np.ones(3, dtype=bool)
    voxels = float(np.prod(extent / spacing))
    if voxels > grid_voxels:
        factor = (voxels / grid_voxels) ** (1.0 / fine.sum())
        spacing = np.where(fine, spacing * factor, spacing)
        if fine.sum() < 3:
            spacing = np.minimum(spacing, coarse)
    return [round(float(s), 4) for s in spacing]


def _stride(cfg: EngineConfig) -> int:
    return int(np.prod(cfg.model.strides))


def patch_size(fp: Fingerprint, spacing: list[float], stride: int, max_voxels: int) -> list[int]:
    """Median shape at ``spacing`` (the smallest case along the through-plane axis of an anisotropic
    set), floored to the stride, shrunk to ``max_voxels``."""
    sizes = np.asarray(fp.shapes) * np.asarray(fp.spacings) / np.asarray(spacing)
    target = np.median(sizes, axis=0)
    med = np.asarray(fp.median_spacing)
    coarse = med >= med.min() * ANISOTROPY
    target = np.where(coarse, sizes.min(0), target)
    patch = [max(stride, int(v // stride) * stride) for v in target]
    while math.prod(patch) > max_voxels and max(patch) > stride:
        i = int(np.argmax(patch))
        patch[i] -= stride
    return patch


def estimate_train_seconds(plan: Plan, n_validation: int, seconds_per_iteration: float) -> float:
    """Training time of one run: iterations, validations every ``val_every``, final calibration passes."""
    val_pass = n_validation * math.prod(plan.grid_shape) * CPU_SECONDS_PER_INFERENCE_VOXEL
    checks = math.ceil(plan.iterations / plan.val_every) + FINAL_PASSES
    return plan.iterations * seconds_per_iteration + checks * val_pass


def fill_budget(p: Plan, n_validation: int, seconds_per_iteration: float, budget: float, most: int) -> int:
    """The most iterations (a multiple of ``p.val_every``, at least one interval, at most ``most``) whose
    estimated training time stays within ``budget`` seconds."""
    step = p.val_every
    trial = Plan(**{**p.to_dict(), "iterations": step})
    best = step
    while trial.iterations + step <= most:
        trial.iterations += step
        if estimate_train_seconds(trial, n_validation, seconds_per_iteration) > budget:
            break
        best = trial.iterations
    return best


def timed_seconds_per_iteration(cfg: EngineConfig, repeats: int = 3) -> float:
    """A timed forward/backward of the real network on the planned patch and batch, times STEP_FACTOR."""
    import torch

    from .model import build_network

    net = build_network(cfg.model, cfg.num_classes)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(cfg.train.batch_labeled + cfg.train.batch_unlabeled, 1, *cfg.train.patch_size)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        net(x).float().mean().backward()
        opt.step()
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) * STEP_FACTOR


def _grid(fp: Fingerprint, spacing) -> list[int]:
    """The median case's shape at ``spacing``."""
    extent = np.asarray(fp.median_spacing) * np.asarray(fp.median_shape)
    return [int(round(e / s)) for e, s in zip(extent, spacing, strict=True)]


def patch_coverage(fp: Fingerprint, spacing, patch) -> float:
    """The share of the median case's voxels (at ``spacing``) one patch holds, at most 1."""
    return min(1.0, math.prod(patch) / max(1, math.prod(_grid(fp, spacing))))


def lowres_spacing(fp: Fingerprint, spacing: list[float], stride: int, max_voxels: int) -> list[float] | None:
    """The low-resolution candidate's spacing, or None when the patch at ``spacing`` already sees
    ``LOWRES_TRIGGER`` of the median case (then low resolution would only lose detail).

    The fine axes (as in :func:`working_spacing`; all of an isotropic set) are coarsened together in 1%
    steps, the patch re-planned at each, until it sees ``LOWRES_COVERAGE`` of the median case, at most
    ``LOWRES_MAX_FACTOR`` times ``spacing`` and never beyond the coarsest axis. Why: on left_atrium (1.25 mm,
    40^3 patches, 21% of the median case) supervised validation Dice went from 0.789 to 0.837 at 1.6 mm
    with 48x40x32 patches (4 labeled, mean of 3 subsets); a patch that sees the atrium with the veins and
    the aorta around it tells them apart."""
    base = np.asarray(spacing, dtype=float)
    if patch_coverage(fp, base, patch_size(fp, list(base), stride, max_voxels)) >= LOWRES_TRIGGER:
        return None
    med = np.asarray(fp.median_spacing)
    fine = med < med.max() / ANISOTROPY
    if not fine.any():
        fine = np.ones(3, dtype=bool)
    ceiling = base.max() if fine.sum() < 3 else np.inf
    factor, current = 1.0, base
    while factor < LOWRES_MAX_FACTOR:
        factor = min(LOWRES_MAX_FACTOR, factor * 1.01)
        current = np.where(fine, np.minimum(base * factor, ceiling), base)
        if patch_coverage(fp, current, patch_size(fp, list(current), stride, max_voxels)) >= LOWRES_COVERAGE:
            break
    return [round(float(s), 4) for s in current]


def resolutions(fp: Fingerprint, profile: str = "cpu") -> list[str]:
    """The candidate resolutions of ``fp``: ``["full"]``, or ``["full", "low"]`` (:func:`lowres_spacing`)."""
    cfg = profile_config(profile, fp.classes)
    spacing = working_spacing(fp, GRID_VOXELS[profile])
    low = lowres_spacing(fp, spacing, _stride(cfg), PATCH_VOXELS[profile])
    return ["full"] if low is None else ["full", "low"]


def plan(fp: Fingerprint, profile: str = "cpu", *, n_validation: int | None = None, measure: bool = False,
         resolution: str = "full") -> Plan:
    """The plan for ``fp`` and ``profile``; ``measure`` times the network instead of the cost model;
    ``resolution="low"``: at the low-resolution candidate's spacing (a ValueError when ``fp`` has none)."""
    cfg = profile_config(profile, fp.classes)
    if profile not in GRID_VOXELS:
        raise ValueError(f"unknown profile {profile!r}; choose cpu or gpu")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}; choose {' or '.join(RESOLUTIONS)}")
    spacing = working_spacing(fp, GRID_VOXELS[profile])
    if resolution == "low":
        low = lowres_spacing(fp, spacing, _stride(cfg), PATCH_VOXELS[profile])
        if low is None:
            raise ValueError(f"{fp.name} has no low-resolution plan: the full-resolution patch already sees "
                             f"{LOWRES_TRIGGER:.0%} or more of the median case")
        spacing = low
    grid = _grid(fp, spacing)
    patch = patch_size(fp, spacing, _stride(cfg), PATCH_VOXELS[profile])
    batch = int(min(8, max(2, STEP_VOXELS[profile] // math.prod(patch))))
    sp = np.asarray(fp.spacings)
    own = bool(np.all(np.abs(sp / np.asarray(spacing) - 1) <= 0.01))
    p = Plan(profile=profile, spacing=None if own else spacing, patch_size=patch, batch_labeled=batch,
             batch_unlabeled=batch, iterations=cfg.train.iterations, val_every=cfg.train.val_every,
             grid_shape=grid, seconds_per_iteration=None, estimated_train_seconds=None, budget_seconds=None,
             fingerprint=fp.summary(), resolution=resolution)
    if profile == "cpu":
        if n_validation is None:
            n_validation = max(2, int(math.floor(0.1 * fp.cases + 0.5)))
        spi = timed_seconds_per_iteration(p.apply(cfg)) if measure else \
            CPU_SECONDS_PER_VOXEL * math.prod(patch) * 2 * batch
        p.iterations = fill_budget(p, n_validation, spi, CPU_BUDGET_SECONDS * (1 - BUDGET_MARGIN),
                                   MAX_SCHEDULE_FACTOR * cfg.train.iterations)
        p.seconds_per_iteration = round(spi, 4)
        p.estimated_train_seconds = round(estimate_train_seconds(p, n_validation, spi), 1)
        p.budget_seconds = CPU_BUDGET_SECONDS
    return p


def plan_dataset(folder: str | Path, profile: str = "cpu", **kwargs) -> Plan:
    """Fingerprint a Decathlon folder and plan it (the entry point for a user's own dataset)."""
    max_volumes = kwargs.pop("max_volumes", 40)
    return plan(fingerprint(folder, max_volumes=max_volumes), profile, **kwargs)
