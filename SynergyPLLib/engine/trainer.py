"""Semi-supervised training: supervised, Mean Teacher, SGRS and SynergyPL on one network.

One training step takes a labeled and an unlabeled batch; the EMA teacher is updated exactly once per
step, after the optimizer. The model kept is the teacher at the iteration with the best Dice on the
validation split (never the test split). ``state.pt`` lets a run resume; ``should_stop`` cancels it.

Methods (``TrainConfig.method``):
- ``supervised`` / ``full``: labeled loss only (``full`` is the same with every case labeled).
- ``mean_teacher``: + ramped MSE between student and teacher softmax on noisy unlabeled images.
- ``sgrs``: + pseudo labels, mix augmentation, synergy evaluation and the regional losses.
- ``synergypl``: SynergyPL's method (``train.synergy``): copy-paste (BCP) or mixup views, consistency
  between the student's plain and mixed views, the C-class bar on the calibrated teacher (max prob >= tau,
  tau chosen on validation), soft pseudo labels (similar-class smoothing, rare-class boost; ``train.soft``).

For every method: a cosine/poly learning-rate decay (``train.lr_schedule``) and label-preserving
augmentation (``train.augment``). Semi-supervised methods may start with a supervised warm start
(``train.warmup_fraction`` of the iterations): then the teacher becomes a copy of the warmed student, and
the unlabeled ramp-up starts there (the *hand-over*). A fine-tuning round (``init_checkpoint``) skips it.
The temperature stored with the model is fitted once, on validation, for the selected model at the end;
synergypl with a warm start fits one more at the hand-over for the teacher's bar (both recorded).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.utils import set_determinism

from ..common.metrics import dice_per_class
from . import distributed
from .augment import Augmenter
from .calibration import expected_calibration_error, fit_temperature
from .config import EngineConfig, warmup_fraction_for
from .data import CaseSpec, LoadedCase, PatchSampler, Preprocessor, load_cases
from .error_model import fit_error_model
from .inference import Predictor
from .model import (
    CHECKPOINT_FORMAT,
    FeatureHook,
    atomic_torch_save,
    build_network,
    load_checkpoint,
    network_from_checkpoint,
)
from .sliding_window import WindowPredictor
from .soft_labels import (
    ClassPrototypes,
    boost_probabilities,
    class_frequencies,
    rare_boost_weights,
    soft_pseudo_targets,
)
from .synergy import (
    REGION_NAMES,
    RegionalLoss,
    choose_offset,
    choose_tau,
    confidence_bar,
    copy_paste,
    copy_paste_masks,
    gaussian_rampup,
    mix_images,
    mix_lambda,
    offset_table,
    pair_labeled,
    smoothed_targets,
    soft_cross_entropy,
    stitch,
    synergy_regions,
    tau_table,
    teacher_regions,
)

SEMI_SUPERVISED = ("mean_teacher", "sgrs", "synergypl")


@dataclass
class ProgressEvent:
    """What a progress callback receives: after each iteration, validation, and at the end."""

    iteration: int
    total: int
    losses: dict[str, float]
    val_dice: float | None
    best_val_dice: float | None
    eta_seconds: float
    phase: str  # "train" | "validate" | "calibrate" | "done" | "cancelled"


@dataclass
class TrainResult:
    checkpoint: Path
    best_val_dice: float
    best_iteration: int
    iterations: int
    train_seconds: float
    temperature: float
    ece_before: float
    ece_after: float
    cancelled: bool
    history: list[dict] = field(default_factory=list)


def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, parameters and float buffers."""
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)
        for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
            if t.dtype.is_floating_point:
                t.copy_(s)


def build_optimizer(net: torch.nn.Module, tc) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's choice, for long GPU schedules) or AdamW (short CPU schedules)."""
    if tc.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    raise ValueError(f"unknown optimizer {tc.optimizer!r}; choose sgd or adamw")


def build_scheduler(optimizer: torch.optim.Optimizer, tc) -> torch.optim.lr_scheduler.LRScheduler:
    """Learning-rate decay over the run's ``iterations`` steps (stepped once per iteration): ``cosine``
    (CosineAnnealingLR down to ``lr * lr_min_fraction``), ``poly`` (nnU-Net's ``(1 - t/T) ** power``, floored
    at the same fraction) or ``none``. After the last iteration the lr is ``lr * lr_min_fraction``."""
    total, floor = max(1, tc.iterations), float(tc.lr_min_fraction)
    if tc.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=tc.lr * floor)
    if tc.lr_schedule == "poly":
        power = float(tc.poly_power)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: floor + (1 - floor) * max(0.0, 1 - min(i, total) / total) ** power)
    if tc.lr_schedule == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    raise ValueError(f"unknown lr_schedule {tc.lr_schedule!r}; choose cosine, poly or none")


class Trainer:
    """Holds networks, optimizer, samplers and state; ``step()`` runs one iteration."""

    def __init__(self, config: EngineConfig, labeled: list[LoadedCase], unlabeled: list[LoadedCase],
                 validation: list[LoadedCase], out_dir: str | Path, *, device: str | None = None,
                 init_checkpoint: str | Path | None = None):
        tc = config.train
        if tc.method not in (*SEMI_SUPERVISED, "supervised", "full"):
            raise ValueError(f"unknown method {tc.method!r}")
        if not labeled:
            raise ValueError("training needs at least one labeled case")
        if tc.method in SEMI_SUPERVISED and not unlabeled:
            raise ValueError(f"method {tc.method} needs unlabeled cases; none were given")
        if not validation:
            raise ValueError("training needs at least one validation case (for checkpoint selection)")
        self.config = config
        self.tc = tc
        self.method = tc.method
        self.C = config.num_classes
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dist = distributed.setup(device)  # DDP hook: rank, world size, this rank's device
        self.device = self.dist.device
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        set_determinism(seed=tc.seed)
        self.rng = np.random.default_rng(self.dist.rank_seed(tc.seed))  # DDP hook: own stream per rank
        self.gen = torch.Generator().manual_seed(self.dist.rank_seed(tc.seed))

        self.student = build_network(config.model, self.C).to(self.device)
        self.temperature = 1.0  # the model's (fitted once at the end)
        self.bar_temperature = 1.0  # the teacher's, for the confidence bar during training
        self.fine_tuning = init_checkpoint is not None
        self.error_views = None  # all views are tried (error_model.VIEWS)
        if init_checkpoint is not None:  # fine-tuning round: start from the last model
            ckpt = load_checkpoint(init_checkpoint)
            self.student.load_state_dict(ckpt["state_dict"])
            self.bar_temperature = float(ckpt.get("temperature", 1.0))
            # a fine-tuning round keeps the previous model's heatmap view (refits only the error model)
            self.error_views = (ckpt["error_model"]["view"],) if ckpt.get("error_model") else None
        self.teacher = copy.deepcopy(self.student).eval()  # pseudo labels without dropout noise
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.optimizer = build_optimizer(self.student, tc)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.augment = Augmenter(tc.augment, self.rng)
        self.features = FeatureHook(self.student)
        # DDP + AMP hooks: the training forward goes through DDP (synchronized gradients) and autocast
        self.train_net = amp_forward(self.dist.wrap(self.student, self.teacher), self.device, tc.amp)
        self.teacher_net = amp_forward(self.teacher, self.device, tc.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=bool(tc.amp and self.device.type == "cuda"))
        self.dist.seed_ranks(tc.seed)  # DDP hook: dropout masks differ per rank (nothing without DDP)

        self.labeled = self.dist.shard(PatchSampler(labeled, tc.patch_size, self.rng), tc.seed)
        self.unlabeled = self.dist.shard(PatchSampler(unlabeled, tc.patch_size, self.rng), tc.seed + 1) \
            if unlabeled else None
        self.validation = validation
        self.window = WindowPredictor(self.teacher, tc.patch_size, config.inference.overlap,
                                      config.inference.sw_batch_size, str(self.device))

        soft = tc.soft
        is_pl = self.method == "synergypl"
        self.frequencies = class_frequencies([c.label for c in labeled], self.C)  # once, on the labeled data
        self.boost = rare_boost_weights(self.frequencies, soft.rare_power) if is_pl and soft.rare_boost else None
        self.prototypes = ClassPrototypes(self.C, soft.prototype_momentum)
        self.use_similarity = is_pl and soft.similarity
        self.bar = confidence_bar(tc.confidence_mode, tc.margin_threshold, tc.entropy_threshold)
        self.tau = float(tc.synergy.tau)
        self.bar_info: dict = {"tau": self.tau, "source": "config"}
        self.pseudo_offset = 0.0  # background logit offset of the teacher's pseudo labels (chosen with the bar)
        # supervised warm start (semi-supervised methods, not when fine-tuning from a previous model)
        self.warmup_iters = int(round(warmup_fraction_for(tc) * tc.iterations)) \
            if self.method in SEMI_SUPERVISED and not self.fine_tuning else 0
        self.handed_over = self.warmup_iters == 0
        self.dice_loss = DiceLoss(include_background=False, softmax=True, smooth_nr=1.0, smooth_dr=1.0)
        self.regional = RegionalLoss(self.C, tc.label_smoothing, tc.soft_dice_smooth, tc.region_normalization,
                                     tc.soft_dice_weight, tc.soft_dice_batch)

        self.iteration = 0
        self.ema_updates = 0
        self.best_dice = -1.0
        self.best_iteration = 0
        self.history: list[dict] = []
        self.region_share = torch.zeros(4)

    # --- losses -------------------------------------------------------------------------------
    def _smoothing_rows(self) -> torch.Tensor | None:
        return self.prototypes.smoothing_rows() if self.use_similarity else None

    def supervised_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """0.5 * (CE + Dice) on labeled patches, against the labels as they are (never smoothed)."""
        target = smoothed_targets(labels, self.C, 0.0)
        ce = soft_cross_entropy(logits, target).mean()
        dice = self.dice_loss(logits, target)
        return 0.5 * (ce + dice)

    def unlabeled_weight(self) -> float:
        """The ramped unlabeled weight: 0 during the warm start, then the Gaussian ramp-up from the hand-over."""
        if self.iteration < self.warmup_iters:
            return 0.0
        tc = self.tc
        return gaussian_rampup(self.iteration - self.warmup_iters, tc.iterations - self.warmup_iters,
                               tc.rampup_fraction) * tc.unlabeled_weight

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.gen) * self.tc.pseudo_noise_sigma
        return x + noise.clamp(-self.tc.pseudo_noise_clip, self.tc.pseudo_noise_clip).to(x.device)

    def step(self) -> dict[str, float]:
        """One iteration: forward, backward, optimizer step, then exactly one EMA update."""
        tc = self.tc
        self.student.train()
        xl, yl = self.labeled.sample(tc.batch_labeled)
        xl, yl = self.augment.geometry(xl.to(self.device), yl.to(self.device))
        xl = self.augment.intensity(xl)
        w = self.unlabeled_weight()
        losses: dict[str, float] = {}
        if self.method in ("supervised", "full") or self.iteration < self.warmup_iters:
            loss = self.supervised_loss(self.train_net(xl), yl)
            if self.method in SEMI_SUPERVISED:  # warm start: supervised only
                losses["supervised"], losses["unlabeled"] = float(loss.detach()), 0.0
        else:
            loss = self._semi_supervised_loss(xl, yl, w, losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # AMP hook: a no-op scaler unless amp on CUDA
        self.scaler.step(self.optimizer)
        self.scaler.update()
        losses["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.scheduler.step()
        self.iteration += 1
        ema_update(self.teacher, self.student, min(1 - 1 / (self.iteration + 1), tc.ema_decay))
        self.ema_updates += 1
        if not self.handed_over and self.iteration >= self.warmup_iters:
            self.hand_over()
        losses["total"] = float(loss.detach())
        losses["weight"] = w
        return losses

    def hand_over(self) -> None:
        """End of the warm start: the teacher becomes a copy of the warmed student; synergypl fits the
        teacher's temperature and chooses its bar on validation (recorded in ``bar_info``)."""
        self.teacher.load_state_dict(self.student.state_dict())
        self.handed_over = True
        if self.method == "synergypl":
            self.prepare_bar(fit=self.tc.soft.calibrate)

    def prepare_bar(self, fit: bool) -> None:
        """The teacher's bar temperature (fitted on validation when ``fit``) and tau (chosen on validation
        from ``synergy.tau_grid`` when ``synergy.select_tau``); rank 0 decides, every rank gets it."""
        info = self._bar_on_validation(fit) if self.dist.is_main else None
        info = self.dist.broadcast_object(info)
        self.bar_temperature, self.tau, self.bar_info = info["temperature"], info["tau"], info
        self.pseudo_offset = float(info.get("offset", 0.0))

    def _bar_on_validation(self, fit: bool) -> dict:
        syn = self.tc.synergy
        _, logits, labels = self.validate(collect_logits=True)
        t = float(fit_temperature(logits, labels)) if fit else self.bar_temperature
        calibrated = logits.float() / t
        offsets = offset_table(calibrated, labels, syn.offset_grid) if syn.select_offset else None
        offset = choose_offset(offsets) if offsets else 0.0
        probs = boost_probabilities(torch.softmax(self._offset(calibrated, offset, 1), 1), self.boost)
        table = tau_table(probs, labels, syn.tau_grid)
        choose = syn.select_tau and syn.bar == "max_prob"
        tau = choose_tau(table, syn.min_coverage) if choose else float(syn.tau)
        return {"iteration": self.iteration, "temperature": t, "temperature_fitted": bool(fit), "tau": tau,
                "source": "validation" if choose else "config", "table": table, "offset": offset,
                "offset_table": offsets}

    @staticmethod
    def _offset(logits: torch.Tensor, offset: float, class_dim: int) -> torch.Tensor:
        """``logits`` with ``offset`` added to the background class (along ``class_dim``)."""
        if not offset:
            return logits
        shifted = logits.clone()
        shifted.select(class_dim, 0).add_(offset)
        return shifted

    def _semi_supervised_loss(self, xl: torch.Tensor, yl: torch.Tensor, w: float,
                              losses: dict[str, float]) -> torch.Tensor:
        """Labeled loss + ``w`` * the method's unlabeled loss on a fresh unlabeled batch (fills ``losses``)."""
        xu, _ = self.unlabeled.sample(self.tc.batch_unlabeled)
        xu, _ = self.augment.geometry(xu.to(self.device))  # the same patch for teacher and student
        extra = None
        if self.method == "mean_teacher":
            logits_l, loss_u = self._mean_teacher_loss(xl, xu, losses)
        elif self.method == "sgrs":
            logits_l, loss_u = self._synergy_loss(xl, xu, losses)
        else:
            logits_l, loss_u, extra = self._synergypl_loss(xl, yl, xu, losses)
        if self.use_similarity and self.features.features is not None:
            self.prototypes.update(self.features.features[:xl.shape[0]], yl)
            self.dist.sync_prototypes(self.prototypes)  # DDP hook: the same prototypes on every rank
        loss_l = self.supervised_loss(logits_l, yl)
        if extra is not None:  # the labeled-origin part of the copy-paste images
            losses["mixed_labeled"] = float(extra.detach())
            loss_l = loss_l + self.tc.synergy.mixed_labeled_weight * extra
        losses["supervised"] = float(loss_l.detach())
        losses["unlabeled"] = float(loss_u.detach())
        return loss_l + w * loss_u

    def _mean_teacher_loss(self, xl: torch.Tensor, xu: torch.Tensor,
                           losses: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(labeled logits, weighted MSE between student and teacher softmax on noisy unlabeled images)."""
        bl = xl.shape[0]
        logits = self.train_net(torch.cat([xl, self.augment.intensity(self._noisy(xu))]))
        with torch.no_grad():
            t_probs = torch.softmax(self.teacher_net(self._noisy(xu)), 1)
        consistency = F.mse_loss(torch.softmax(logits[bl:], 1), t_probs)
        losses["consistency"] = float(consistency.detach())
        return logits[:bl], self.tc.consistency_weight * consistency

    def _synergy_loss(self, xl: torch.Tensor, xu: torch.Tensor,
                      losses: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """``sgrs`` as published: (labeled logits, regional loss on the unlabeled and mixed images against the
        teacher's hard pseudo labels; mixup; the margin bar on the student's two views)."""
        tc = self.tc
        bl, bu = xl.shape[0], xu.shape[0]
        with torch.no_grad():
            pseudo = self.teacher_net(self._noisy(xu)).argmax(1)
        lam = mix_lambda(bu, tc.mix_beta, self.gen).to(self.device)
        x_mix = mix_images(xu, xl, lam)
        logits = self.train_net(torch.cat([xl, xu, x_mix]))
        logits_l, logits_u, logits_m = logits[:bl], logits[bl:bl + bu], logits[bl + bu:]
        with torch.no_grad():
            regions = synergy_regions(torch.softmax(logits_u, 1), torch.softmax(logits_m, 1),
                                      tc.confidence_mode, self.bar)
            self.region_share = torch.bincount(regions.flatten().cpu(), minlength=4).float() / regions.numel()
        lu, parts_u = self.regional(logits_u, pseudo, regions)
        lm, parts_m = self.regional(logits_m, pseudo, regions)
        for k in parts_u:
            losses[k] = float(0.5 * (parts_u[k] + parts_m[k]).detach())
        return logits_l, 0.5 * (0.5 * (lu + lm))

    def teacher_pseudo(self, xu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(calibrated, offset, boosted teacher probabilities, hard pseudo labels, soft pseudo-label targets)."""
        soft = self.tc.soft
        with torch.no_grad():
            logits = self.teacher_net(self._noisy(xu)).float() / self.bar_temperature
            probs = torch.softmax(self._offset(logits, self.pseudo_offset, 1), 1)
            probs = boost_probabilities(probs, self.boost)
            eps = soft.smoothing if self.use_similarity else 0.0
            return probs, probs.argmax(1), soft_pseudo_targets(probs, eps, self._smoothing_rows())

    def _synergypl_loss(self, xl: torch.Tensor, yl: torch.Tensor, xu: torch.Tensor, losses: dict[str, float]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(labeled logits, unlabeled loss, labeled-origin loss of the copy-paste images or None).

        The student sees U (intensity-augmented) and its mixed view (copy-paste: each U voxel once, pasted
        among labeled context, :func:`stitch` of the two BCP images; or mixup); regions from the student's
        two views (consistency) and the calibrated teacher's bar; regional losses against soft pseudo labels.
        """
        tc, syn = self.tc, self.tc.synergy
        bl, bu = xl.shape[0], xu.shape[0]
        t_probs, pseudo, targets = self.teacher_pseudo(xu)
        xs = self.augment.intensity(xu)
        extra = None
        if syn.mix == "copy_paste":
            masks = copy_paste_masks(bu, tuple(xu.shape[2:]), syn.box_fraction, self.gen).to(self.device)
            x_in, x_out = copy_paste(xs, xl, masks)
            logits = self.train_net(torch.cat([xl, xs, x_in, x_out]))
            logits_l, logits_u = logits[:bl], logits[bl:bl + bu]
            l_in, l_out = logits[bl + bu:bl + 2 * bu], logits[bl + 2 * bu:]
            logits_m = stitch(l_in, l_out, masks)  # U's voxels in labeled context
            extra = self.supervised_loss(stitch(l_out, l_in, masks), pair_labeled(yl, bu))  # X's voxels
            weight_m = syn.alpha
        else:
            lam = mix_lambda(bu, tc.mix_beta, self.gen).to(self.device)
            logits = self.train_net(torch.cat([xl, xs, mix_images(xs, xl, lam)]))
            logits_l, logits_u, logits_m = logits[:bl], logits[bl:bl + bu], logits[bl + bu:]
            weight_m = 0.5
        with torch.no_grad():
            pu, pm = torch.softmax(logits_u, 1), torch.softmax(logits_m, 1)
            if syn.bar == "max_prob":
                regions = teacher_regions(pu, pm, t_probs, self.tau)
            else:
                regions = synergy_regions(pu, pm, "margin", tc.margin_threshold)
            self.region_share = torch.bincount(regions.flatten().cpu(), minlength=4).float() / regions.numel()
        lu, parts_u = self.regional(logits_u, pseudo, regions, self._smoothing_rows(), targets)
        lm, parts_m = self.regional(logits_m, pseudo, regions, self._smoothing_rows(), targets)
        for k in parts_u:
            losses[k] = float(0.5 * (parts_u[k] + parts_m[k]).detach())
        return logits_l, 0.5 * (0.5 * lu + weight_m * lm), extra

    # --- validation, calibration, checkpoints -------------------------------------------------
    @torch.no_grad()
    def validate(self, collect_logits: bool = False):
        """Mean foreground Dice of the teacher on the validation cases (and their logits if asked)."""
        self.teacher.eval()
        dices, logits_all, labels_all = [], [], []
        for case in self.validation:
            logits = self.window(torch.from_numpy(case.image)[None])[0].cpu()
            pred = logits.argmax(0).numpy()
            dices.append(np.mean(dice_per_class(pred, case.label, self.C)))
            if collect_logits:
                logits_all.append(logits.reshape(self.C, -1).T)
                labels_all.append(torch.from_numpy(case.label.reshape(-1).astype(np.int64)))
        mean = float(np.mean(dices))
        if collect_logits:
            return mean, torch.cat(logits_all), torch.cat(labels_all)
        return mean

    def calibrate(self) -> tuple[float, float, float]:
        """Fit the temperature on validation logits; returns (T, ECE before, ECE after)."""
        _, logits, labels = self.validate(collect_logits=True)
        before = expected_calibration_error(torch.softmax(logits, 1), labels)
        t = fit_temperature(logits, labels)
        after = expected_calibration_error(torch.softmax(logits / t, 1), labels)
        return float(t), float(before), float(after)

    def model_payload(self, temperature: float | None = None, metrics: dict | None = None) -> dict:
        inf = self.config.inference
        refs = self.labeled.foreground_patches(max(1, inf.mix_views))
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "classes": list(self.config.classes),
            "state_dict": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()},
            "temperature": float(self.temperature if temperature is None else temperature),
            "mix_references": [r.astype(np.float16) for r in refs],
            "class_frequencies": self.frequencies.tolist(),
            "smoothing_rows": self.prototypes.smoothing_rows().tolist(),
            "iteration": self.iteration,
            "metrics": metrics or {},
        }

    def save_state(self) -> None:
        extra = self.dist.rank_states(self)  # DDP hook: every rank's random state (collective); rank 0 writes
        if not self.dist.is_main:
            return
        atomic_torch_save({
            "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
            "ema_updates": self.ema_updates, "best_dice": self.best_dice, "best_iteration": self.best_iteration,
            "temperature": self.temperature, "prototypes": self.prototypes.state_dict(),
            "history": self.history, "rng": self.rng.bit_generator.state, "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(), "method": self.method, "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict(), "handed_over": self.handed_over,
            "bar_temperature": self.bar_temperature, "tau": self.tau, "bar_info": self.bar_info, **extra,
        }, self.out_dir / "state.pt")

    def load_state(self) -> bool:
        path = self.out_dir / "state.pt"
        if not path.exists():
            return False
        s = torch.load(path, map_location="cpu", weights_only=False)
        if s.get("method") != self.method:
            raise ValueError(f"{path}: was written by method {s.get('method')}, not {self.method}")
        self.student.load_state_dict(s["student"])
        self.teacher.load_state_dict(s["teacher"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.iteration, self.ema_updates = s["iteration"], s["ema_updates"]
        self.best_dice, self.best_iteration = s["best_dice"], s["best_iteration"]
        self.temperature = s["temperature"]
        self.prototypes.load_state_dict(s["prototypes"])
        self.history = s["history"]
        self.rng.bit_generator.state = s["rng"]
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        if s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        if s.get("scheduler"):
            self.scheduler.load_state_dict(s["scheduler"])
        else:  # a state.pt from before the schedule: continue the schedule where the run is
            for _ in range(self.iteration):
                self.scheduler.step()
        self.handed_over = s.get("handed_over", True)
        self.bar_temperature = s.get("bar_temperature", self.bar_temperature)
        self.tau, self.bar_info = s.get("tau", self.tau), s.get("bar_info", self.bar_info)
        self.pseudo_offset = float(self.bar_info.get("offset", 0.0))
        self.dist.load_rank_state(self, s)  # DDP hook: this rank's random state and data-stream position
        return True

    def _tracks_offset(self) -> bool:
        syn = self.tc.synergy
        return (self.method == "synergypl" and self.handed_over and syn.select_offset and syn.track_offset
                and self.iteration > self.warmup_iters)

    def _track_offset(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Choose the pseudo-label offset again on this validation pass's teacher logits (``track_offset``);
        each choice is appended to ``bar_info["offset_track"]``."""
        table = offset_table(logits.float() / self.bar_temperature, labels, self.tc.synergy.offset_grid)
        self.pseudo_offset = choose_offset(table)
        self.bar_info["offset"] = self.pseudo_offset
        self.bar_info.setdefault("offset_track", []).append(
            {"iteration": self.iteration, "offset": self.pseudo_offset,
             "volume_ratio": next(r["volume_ratio"] for r in table if r["offset"] == self.pseudo_offset)})

    def _validate_and_keep_best(self) -> float:
        if self._tracks_offset():
            dice, logits, labels = self.validate(collect_logits=True)
            self._track_offset(logits, labels)
        else:
            dice = self.validate()
        if dice > self.best_dice:
            self.best_dice, self.best_iteration = dice, self.iteration
            atomic_torch_save(self.model_payload(metrics={"val_dice": dice}), self.out_dir / "model.pt")
        return dice

    def run(self, *, resume: bool = False, on_progress: Callable[[ProgressEvent], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train to ``iterations``; returns the selected checkpoint and its validation numbers."""
        tc = self.tc
        resumed = self.load_state() if resume else False
        if not resumed and self.fine_tuning and self.method == "synergypl":
            self.prepare_bar(fit=False)  # the previous model's temperature; tau chosen for it on validation
        start, start_it = time.perf_counter(), self.iteration
        self._run_started = start

        def emit(phase, losses, val=None):
            if on_progress is None or not self.dist.is_main:  # DDP hook: progress once, from rank 0
                return
            done = self.iteration - start_it
            rate = (time.perf_counter() - start) / max(1, done)
            on_progress(ProgressEvent(self.iteration, tc.iterations, losses, val,
                                      self.best_dice if self.best_dice >= 0 else None,
                                      rate * (tc.iterations - self.iteration), phase))

        cancelled = self._train_loop(emit, should_stop)
        self.save_state()
        if not self.dist.is_main:  # DDP hook: rank 0 calibrates and writes model.pt; the others get its result
            return self.dist.finish(self)
        if self.best_dice < 0:  # cancelled before any validation: keep the current teacher
            self._validate_and_keep_best()
        applied, before, after = self._finish_selected_model(emit)
        seconds = self._train_seconds  # as recorded in model.pt (metrics["train_seconds"])
        emit("cancelled" if cancelled else "done", {})
        result = TrainResult(self.out_dir / "model.pt", self.best_dice, self.best_iteration, self.iteration,
                             seconds, applied, before, after, cancelled, self.history)
        return self.dist.finish(self, result)  # DDP hook: the same result on every rank

    def _train_loop(self, emit: Callable, should_stop: Callable[[], bool] | None) -> bool:
        """Steps until ``iterations`` (validating, checkpointing); returns True when ``should_stop`` cancelled it."""
        tc = self.tc
        while self.iteration < tc.iterations:
            if self.dist.should_stop(should_stop):  # DDP hook: rank 0's answer, broadcast
                return True
            losses = self.dist.after_step(self, self.step())  # DDP hook: losses averaged over the ranks
            if self.iteration % tc.val_every == 0 or self.iteration == tc.iterations:
                val = self.dist.validate(self)  # DDP hook: on rank 0, decision broadcast
                self.history.append({"iteration": self.iteration, "val_dice": val, **losses,
                                     **{f"share_{n}": float(v) for n, v in zip(REGION_NAMES, self.region_share, strict=True)}})
                emit("validate", losses, val)
            else:
                emit("train", losses)
            if self.iteration % tc.checkpoint_every == 0:
                self.save_state()
        return False

    def _finish_selected_model(self, emit: Callable) -> tuple[float, float, float]:
        """Calibrate the selected model (model.pt) on the validation split and fit its heatmap's error model
        there (:func:`.error_model.fit_error_model`; scores in ``metrics["heatmap_validation"]``; without
        errors to learn from, no error model and the former heatmap formula); rewrites model.pt. The temperature is reported for every method and applied only
        when the method calibrates. Returns (applied temperature, ECE before, ECE after)."""
        ckpt = load_checkpoint(self.out_dir / "model.pt")
        live = copy.deepcopy(self.teacher.state_dict())
        self.teacher.load_state_dict(ckpt["state_dict"])
        emit("calibrate", {})
        t, before, after = self.calibrate()
        applied = t if (self.method == "synergypl" and self.tc.soft.calibrate) else 1.0
        ckpt["temperature"] = applied
        ckpt["metrics"].update({"val_dice": self.best_dice, "best_iteration": self.best_iteration,
                                "ece_before": before, "ece_after": after if applied != 1.0 else before,
                                "fitted_temperature": t, "warmup_iterations": self.warmup_iters,
                                "synergy_bar": {**self.bar_info, "temperature": self.bar_temperature,
                                                "tau": self.tau}})
        net, cfg = network_from_checkpoint(ckpt)
        report = {"skipped": "inference.fit_error_model is off: the former heatmap formula"}
        if cfg.inference.fit_error_model:
            try:
                model, report = fit_error_model(Predictor(net, cfg, applied, ckpt["mix_references"],
                                                          str(self.device)), self.validation,
                                                **({"views": self.error_views} if self.error_views else {}))
                ckpt["error_model"] = model.to_dict()
            except ValueError as exc:  # too few validation cases, or no wrong voxel to learn from
                report = {"error": str(exc)}
        ckpt["metrics"]["heatmap_validation"] = report
        started = getattr(self, "_run_started", time.perf_counter())
        self._train_seconds = time.perf_counter() - started
        ckpt["metrics"]["train_seconds"] = round(self._train_seconds, 2)
        ckpt["metrics"]["iterations"] = int(self.iteration)
        atomic_torch_save(ckpt, self.out_dir / "model.pt")
        self.teacher.load_state_dict(live)
        return applied, before, ckpt["metrics"]["ece_after"]


def amp_forward(net: torch.nn.Module, device: torch.device, enabled: bool):
    """``net`` itself, or a callable running it under autocast (float16 on CUDA, bfloat16 on CPU) that
    returns float32 logits, so the losses stay in float32."""
    if not enabled:
        return net
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            out = net(x)
        return out.float()

    return forward

def train(config: EngineConfig, labeled: list[CaseSpec], unlabeled: list[CaseSpec], validation: list[CaseSpec],
          out_dir: str | Path, *, init_checkpoint: str | Path | None = None, resume: bool = False,
          on_progress: Callable[[ProgressEvent], None] | None = None,
          should_stop: Callable[[], bool] | None = None, device: str | None = None,
          progress_bar: bool = False) -> TrainResult:
    """Read the cases from disk and run one training round (see :class:`Trainer`)."""
    pre = Preprocessor(config.preprocess)
    lab = load_cases(labeled, pre, config.num_classes, progress=progress_bar)
    unl = load_cases(unlabeled, pre, config.num_classes, labeled=False, progress=progress_bar)
    val = load_cases(validation, pre, config.num_classes, progress=progress_bar)
    for c in lab + val:
        if c.label is None:
            raise ValueError(f"case {c.id} is used as labeled/validation but has no label")
    trainer = Trainer(config, lab, unl, val, out_dir, device=device, init_checkpoint=init_checkpoint)
    return trainer.run(resume=resume, on_progress=on_progress, should_stop=should_stop)
