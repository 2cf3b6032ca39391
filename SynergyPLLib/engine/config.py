"""Configuration of the engine: preprocessing, network, training method and inference.

One :class:`EngineConfig` travels with every checkpoint, so a saved model can be used alone.
Profiles (``cpu`` / ``gpu``) only change sizes and schedules, never the method.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.regions import RegionParams

METHODS = ("supervised", "mean_teacher", "sgrs", "synergypl", "full")
# supervised warm start per method when ``train.warmup_fraction`` is None (docs/method.md, "Defaults"):
# on hippocampus validation (7 labeled, 600 iterations) synergypl reached 0.8403 with 0.3 against
# supervised 0.8318, where from scratch it had levelled off below supervised (issue 10). mean_teacher
# gets the same warm start so that the baseline differs from synergypl only in its unlabeled loss;
# sgrs stays as published (from scratch).
DEFAULT_WARMUP = {"mean_teacher": 0.3, "synergypl": 0.3}
DEFAULT_ORIENTATION = "RAS"
_AXIS_PAIRS = ("LR", "PA", "IS")


def check_axcodes(codes: str | None) -> str | None:
    """``codes`` upper-cased when it names each patient axis once (e.g. "RAS", "LPS", "PIR"), else ValueError.

    None passes through: it means "keep the file's voxel order" (see :class:`PreprocessConfig`).
    """
    if codes is None:
        return None
    text = str(codes).upper()
    axes = sorted(next((i for i, pair in enumerate(_AXIS_PAIRS) if c in pair), -1) for c in text)
    if len(text) != 3 or axes != [0, 1, 2]:
        raise ValueError(f"orientation {codes!r} must be three axis codes naming each of L/R, P/A, I/S once "
                         "(e.g. 'RAS' or 'LPS'), or null")
    return text


@dataclass
class PreprocessConfig:
    """How an image is brought to the network's grid and intensity range (all invertible)."""

    # The voxel order the network sees (MONAI Orientation); predictions are mapped back to the input's own
    # voxel order and geometry. A fixed order makes predictions independent of how a file stores its
    # voxels (DICOM series are usually LPS, NIfTI files RAS). None keeps the file's voxel order: the
    # network then sees a mirrored or transposed image whenever a file is stored differently from the
    # training images (the default before checkpoints recorded an orientation; see docs/orientation.md).
    orientation: str | None = DEFAULT_ORIENTATION
    spacing: tuple[float, float, float] | None = None  # mm; None keeps the file's spacing
    intensity: str = "zscore"  # "zscore" (per image, nonzero voxels) | "percentile" | "none"
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        self.orientation = check_axcodes(self.orientation)


@dataclass
class ModelConfig:
    """A MONAI network; the default is a residual 3D U-Net sized by the profile."""

    network: str = "unet"  # "unet" (monai.networks.nets.UNet) | "basicunet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    dropout: float = 0.1  # also used by the MC-dropout baseline


@dataclass
class SoftLabelConfig:
    """Porcher et al. 2024, applied to the teacher's pseudo labels (synergypl only); each part switchable.

    The labeled cross-entropy is never smoothed: the labels are the strongest signal.
    """

    similarity: bool = True  # soft pseudo-label targets: smoothing mass to similar classes (class prototypes)
    smoothing: float = 0.1  # smoothing mass of the soft pseudo-label targets
    prototype_momentum: float = 0.9
    rare_boost: bool = True  # teacher probabilities of rare foreground classes raised before argmax / bar
    rare_power: float = 0.25  # weight_c = (freq of the commonest foreground class / freq_c) ** power
    calibrate: bool = True  # temperature fitted on validation (once at the end; at hand-over for the bar)


# names of the soft-label options before issue 10 (still read from stored configs)
_SOFT_ALIASES = {"similarity_smoothing": "similarity", "rare_class_boost": "rare_boost",
                 "rare_class_power": "rare_power", "calibration": "calibrate"}


@dataclass
class SynergyConfig:
    """SynergyPL's synergy evaluation (``synergypl`` only; ``sgrs`` stays as published).

    - ``mix``: ``copy_paste`` (bidirectional copy-paste between labeled and unlabeled patches, as BCP) or
      ``mixup`` (the published U_mix = l U + (1 - l) X).
    - ``select_offset``: the teacher's calibrated logits get a background offset chosen on validation (a
      decision threshold for the pseudo labels: positive = fewer foreground voxels), before the bar;
      ``track_offset`` chooses it again at every validation after the hand-over.
    - ``bar``: ``max_prob`` (confident = the calibrated teacher's top probability >= ``tau``, for C classes;
      two classes and tau 0.575 is the published margin rule) or ``margin`` (the published rule on the
      student's two views, ``TrainConfig.margin_threshold``).
    """

    mix: str = "copy_paste"  # "copy_paste" | "mixup"
    box_fraction: float = 0.667  # copy-paste box side as a share of each patch side (BCP: 2/3)
    alpha: float = 0.5  # weight of the unlabeled-origin (pseudo-labeled) part of the mixed images (BCP)
    mixed_labeled_weight: float = 1.0  # weight of the labeled-origin part of the mixed images
    bar: str = "max_prob"  # "max_prob" | "margin"
    tau: float = 0.95  # max_prob bar until one is chosen on validation
    select_tau: bool = True  # choose tau on validation (at hand-over / fine-tuning start) from tau_grid
    tau_grid: tuple[float, ...] = (0.575, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99)
    min_coverage: float = 0.8  # a chosen tau keeps at least this share of validation voxels
    # background logit offset of the teacher's pseudo labels, chosen on validation at hand-over (the one whose
    # argmax has the best validation Dice; ties: nearest 0): left_atrium's supervised teachers over-segment
    # (1.05-1.22x the true volume on validation), and self-training amplified it (1.21-1.37x)
    select_offset: bool = True
    offset_grid: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
    # choose the offset again at every validation after the hand-over (from the same validation pass that
    # selects checkpoints), so it follows the teacher as self-training moves its foreground volume
    track_offset: bool = False


@dataclass
class AugmentConfig:
    """Label-preserving augmentation of training patches (every method; MONAI Affine for the geometry).

    Geometry (applied identically to image and label): rotation, isotropic scale; intensity (image only):
    scale, shift, Gaussian noise. No flips unless ``flip_axes`` names axes whose mirror keeps every class
    (left/right classes are not symmetric).
    """

    enabled: bool = True
    prob: float = 0.8  # share of patches that get the geometric transform
    rotate_degrees: float = 10.0  # per axis, uniform in +-
    scale: float = 0.1  # isotropic, uniform in 1 +- scale
    intensity_scale: float = 0.1  # x * (1 + u), u in +-
    intensity_shift: float = 0.1  # + u, u in +- (z-scored images)
    noise_std: float = 0.05
    flip_axes: tuple[int, ...] = ()  # spatial axes (0, 1, 2) that may be mirrored (classes symmetric)


@dataclass
class TrainConfig:
    method: str = "synergypl"  # one of METHODS
    iterations: int = 600
    round_iterations: int = 200  # a retraining round in the labeling loop fine-tunes this many
    batch_labeled: int = 2
    batch_unlabeled: int = 2
    patch_size: tuple[int, int, int] = (32, 48, 32)
    optimizer: str = "sgd"  # "sgd" (paper) | "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ema_decay: float = 0.99
    mix_beta: float = 0.75  # lambda ~ Beta(a, a), lambda = max(lambda, 1 - lambda) on the unlabeled side
    pseudo_noise_sigma: float = 0.1
    pseudo_noise_clip: float = 0.2
    confidence_mode: str = "margin"  # "margin" (top-1 minus top-2) | "entropy" (normalized)
    margin_threshold: float = 0.15  # two classes: foreground prob outside (0.425, 0.575)
    entropy_threshold: float = 0.983  # two classes: base-10 entropy 0.296 normalized by log10(2)
    label_smoothing: float = 0.2  # inconsistent-but-confident region
    soft_dice_smooth: float = 20.0  # inconsistent-but-confident region
    soft_dice_weight: float = 1.0  # weight of the softened Dice (inconsistent-but-confident region)
    soft_dice_batch: bool = False  # softened Dice pooled over the batch instead of per sample
    region_normalization: str = "all"  # cross-entropies averaged over all voxels | "region": per region
    unlabeled_weight: float = 1.0
    rampup_fraction: float = 0.4  # Gaussian ramp-up reaches full weight at this share of iterations
    consistency_weight: float = 1.0  # mean_teacher baseline (MSE between softmaxes)
    val_every: int = 50
    checkpoint_every: int = 50
    seed: int = 0
    num_threads: int = 0  # 0: leave torch's default
    # mixed precision for training: float16 autocast + GradScaler on CUDA (the gpu profile), bfloat16 autocast
    # on CPU; the losses are computed in float32 either way
    amp: bool = False
    # supervised-only iterations first (inside ``iterations``); then the teacher is a copy of the warmed
    # student and the unlabeled ramp-up starts. Skipped when fine-tuning from a previous model.
    # None: the method's default (DEFAULT_WARMUP: synergypl and mean_teacher 0.3, sgrs as published 0).
    warmup_fraction: float | None = None
    lr_schedule: str = "cosine"  # "cosine" | "poly" | "none" (torch.optim.lr_scheduler, in state.pt)
    lr_min_fraction: float = 0.01  # the last iteration's lr = lr * lr_min_fraction
    poly_power: float = 0.9
    soft: SoftLabelConfig = field(default_factory=SoftLabelConfig)
    synergy: SynergyConfig = field(default_factory=SynergyConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def warmup_fraction_for(train: TrainConfig) -> float:
    """The warm-start share of ``train``: its own ``warmup_fraction``, else its method's default."""
    if train.warmup_fraction is not None:
        return float(train.warmup_fraction)
    return DEFAULT_WARMUP.get(train.method, 0.0)


@dataclass
class InferenceConfig:
    overlap: float = 0.25
    sw_batch_size: int = 2
    mix_views: int = 1  # K mixed views for the synergy heatmap
    mix_lambda: float = 0.75  # weight of the case itself in each mixed view
    flag_threshold: float = 0.5  # heatmap below this is low confidence
    fit_error_model: bool = True  # fit the heatmap's error model on validation after training (off: former formula)
    min_region_voxels: int = 5
    max_regions: int = 50
    max_region_ml: float = RegionParams.max_region_ml  # flagged regions are cut into pieces of at most
    max_region_mm: float = RegionParams.max_region_mm  # this much and this long (common/regions.py)


@dataclass
class EngineConfig:
    classes: list[str] = field(default_factory=lambda: ["background", "foreground"])
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineConfig:
        return _build(cls, d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> EngineConfig:
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            return cls.from_dict(yaml.safe_load(text) or {})
        return cls.from_dict(json.loads(text))


def _build(cls, d: dict[str, Any]):
    """Build nested dataclasses from plain dicts; unknown keys are an error naming the key."""
    if d is None:
        return cls()
    names = {f.name: f for f in dataclasses.fields(cls)}
    if cls is SoftLabelConfig:
        d = {_SOFT_ALIASES.get(k, k): v for k, v in d.items()}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {sorted(unknown)}")
    kwargs = {}
    for key, value in d.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value)
        elif isinstance(default, tuple) and value is not None:
            kwargs[key] = tuple(value)
        elif key == "spacing" and value is not None:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    obj = cls(**kwargs)
    if isinstance(obj, TrainConfig) and obj.method not in METHODS:
        raise ValueError(f"unknown method {obj.method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(obj, TrainConfig) and obj.warmup_fraction is not None and not 0.0 <= obj.warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1), got {obj.warmup_fraction}")
    if isinstance(obj, TrainConfig) and obj.lr_schedule not in ("cosine", "poly", "none"):
        raise ValueError(f"unknown lr_schedule {obj.lr_schedule!r}; choose cosine, poly or none")
    if isinstance(obj, SynergyConfig) and (obj.mix not in ("copy_paste", "mixup") or obj.bar not in ("max_prob", "margin")):
        raise ValueError(f"synergy.mix must be copy_paste|mixup and synergy.bar max_prob|margin, got "
                         f"{obj.mix!r}, {obj.bar!r}")
    return obj


def profile_config(profile: str, classes: list[str] | None = None) -> EngineConfig:
    """The ``cpu`` profile trains one model in a few minutes on 2 cores; ``gpu`` is the full schedule."""
    cfg = EngineConfig(classes=list(classes) if classes else ["background", "foreground"])
    if profile == "cpu":
        # AdamW: on the hippocampus validation split it reaches in 200 iterations what the paper's
        # SGD (lr 0.01) needs about 1000 for; the CPU budget is a few hundred iterations.
        cfg.train.optimizer = "adamw"
        cfg.train.lr = 2e-3
        cfg.train.iterations = 600
        cfg.train.val_every = 50
        # The softened Dice on the (small, scattered) inconsistent-but-confident region dominated the
        # gradient in short runs: validation Dice at 300 iterations 0.709 at weight 1 vs 0.769 at 0.1.
        cfg.train.soft_dice_weight = 0.1
    elif profile == "gpu":
        cfg.model.channels = (32, 64, 128, 256)
        cfg.train.iterations = 6000
        cfg.train.batch_labeled = 4
        cfg.train.batch_unlabeled = 4
        cfg.train.val_every = 200
        cfg.train.checkpoint_every = 200
        cfg.train.amp = True
        cfg.inference.mix_views = 2
    else:
        raise ValueError(f"unknown profile {profile!r}; choose cpu or gpu")
    return cfg
