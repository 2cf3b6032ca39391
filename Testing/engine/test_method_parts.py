"""Issue 10's method parts pinned on hand-made tensors: the C-class bar, copy-paste masks and targets,
the warm start's hand-over, calibration fitted once, the learning-rate decay, augmentation; plus one short
real run (hippocampus) of synergypl with copy-paste and a warm start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import SynergyPLLib.engine.trainer as trainer_mod
from SynergyPLLib.engine.augment import Augmenter
from SynergyPLLib.engine.config import AugmentConfig, EngineConfig, SoftLabelConfig
from SynergyPLLib.engine.data import LoadedCase
from SynergyPLLib.engine.io import Volume
from SynergyPLLib.engine.model import load_checkpoint
from SynergyPLLib.engine.soft_labels import boost_probabilities, rare_boost_weights, soft_pseudo_targets
from SynergyPLLib.engine.synergy import (
    choose_offset,
    choose_tau,
    confidence_score,
    copy_paste,
    copy_paste_masks,
    copy_paste_targets,
    offset_table,
    stitch,
    synergy_regions,
    tau_table,
    teacher_regions,
)
from SynergyPLLib.engine.trainer import Trainer


# --- the C-class bar ---------------------------------------------------------------------------
def _probs(rows: list[list[float]]) -> torch.Tensor:
    """(1, C, N, 1, 1) probabilities from per-voxel rows."""
    return torch.tensor(rows, dtype=torch.float32).T[None, :, :, None, None]


def test_c_class_bar_on_hand_made_probabilities():
    # 3 classes, 4 voxels; the student's plain and mixed views and the calibrated teacher
    plain = _probs([[0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.4, 0.3, 0.3]])
    mixed = _probs([[0.1, 0.7, 0.2], [0.1, 0.6, 0.3], [0.2, 0.7, 0.1], [0.2, 0.2, 0.6]])
    teacher = _probs([[0.02, 0.96, 0.02], [0.3, 0.4, 0.3], [0.97, 0.02, 0.01], [0.5, 0.25, 0.25]])
    regions = teacher_regions(plain, mixed, teacher, tau=0.95)[0, 0, :, 0, 0]
    # v0: views agree, teacher 0.96 >= 0.95 -> 0 | v1: agree, teacher 0.4 -> 1
    # v2: views disagree (0 vs 1), teacher 0.97 -> 2 | v3: disagree, teacher 0.5 -> 3
    assert regions.tolist() == [0, 1, 2, 3]
    # the published margin rule with 3 classes calls v1 (margin 0.2 >= 0.15 in both views) confident:
    assert synergy_regions(plain, mixed, "margin", 0.15)[0, 0, 1, 0, 0] == 0
    # the bar is per voxel of each sample: a second sample does not change the first
    two = teacher_regions(torch.cat([plain, mixed]), torch.cat([mixed, mixed]), torch.cat([teacher, teacher * 0 + 1 / 3]), 0.95)
    assert two[0, 0, :, 0, 0].tolist() == [0, 1, 2, 3] and two[1].min() == 1  # sample 1: a flat teacher, none confident


def test_two_class_max_prob_bar_of_0575_is_the_published_margin_rule():
    fg = torch.linspace(0.0, 1.0, 2001)
    p = torch.stack([1 - fg, fg])[None, :, :, None, None]
    edge = ((fg - 0.425).abs() < 1e-5) | ((fg - 0.575).abs() < 1e-5)
    by_prob = confidence_score(p, "max_prob")[0, 0, :, 0, 0] >= 0.575
    by_margin = confidence_score(p, "margin")[0, 0, :, 0, 0] >= 0.15
    outside_band = (fg <= 0.425) | (fg >= 0.575)
    assert torch.equal(by_prob[~edge], by_margin[~edge])
    assert torch.equal(by_prob[~edge], outside_band[~edge])
    # and the regions agree with the published ones when the teacher is the plain view
    q = torch.stack([1 - fg.flip(0), fg.flip(0)])[None, :, :, None, None]
    ours = teacher_regions(p, q, p, 0.575)[0, 0, :, 0, 0]
    published_conf = (confidence_score(p, "margin") >= 0.15)[0, 0, :, 0, 0]
    assert torch.equal((ours % 2 == 0)[~edge], published_conf[~edge])


def test_tau_chosen_by_precision_coverage_trade_off():
    # 100 voxels: 90 right with top prob 0.99, 5 wrong at 0.99, 5 wrong at 0.8
    top = torch.tensor([0.99] * 95 + [0.8] * 5)
    probs = torch.stack([top, 1 - top], 1)
    labels = torch.tensor([0] * 90 + [1] * 10)
    table = tau_table(probs, labels, (0.575, 0.9, 0.995))
    assert [r["coverage"] for r in table] == [1.0, 0.95, 0.0]
    assert table[1]["precision"] == pytest.approx(90 / 95) and table[1]["errors_removed"] == pytest.approx(0.5)
    assert table[2]["errors_removed"] == 1.0 and table[2]["correct_removed"] == 1.0
    assert choose_tau(table, min_coverage=0.8) == 0.9  # removes half the errors, no correct voxel
    assert choose_tau(table, min_coverage=0.99) == 0.575  # the coverage floor rules 0.9 out


def test_pseudo_label_offset_chosen_by_validation_dice():
    # 20 voxels, 2 classes: 10 foreground; the teacher's foreground log-odds run from 2 to 6.5 in steps of
    # 0.5 for the true foreground and from -3 to 1.5 for the background: at offset 0 it over-segments (3
    # background voxels at log-odds 0.5, 1.0, 1.5 predicted foreground); +1.5 drops those and no true one
    fg_truth = torch.arange(0.0, 10.0) * 0.5 + 2.0
    bg_truth = torch.arange(0.0, 10.0) * 0.5 - 3.0
    logit_fg = torch.cat([fg_truth, bg_truth])
    logits = torch.stack([torch.zeros(20), logit_fg], 1)
    labels = torch.tensor([1] * 10 + [0] * 10)
    table = offset_table(logits, labels, (-1.0, 0.0, 1.5, 3.0))
    by = {r["offset"]: r for r in table}
    assert by[0.0]["volume_ratio"] == pytest.approx(13 / 10)  # 10 right + 3 background at 0.5, 1.0, 1.5
    assert by[0.0]["dice"] == pytest.approx(2 * 10 / (13 + 10))
    assert by[1.5]["dice"] == pytest.approx(1.0) and by[1.5]["volume_ratio"] == pytest.approx(1.0)
    assert by[3.0]["volume_ratio"] < 1.0  # too far: true foreground lost
    assert choose_offset(table) == 1.5
    # ties go to the offset nearest 0: a perfectly separated teacher keeps 0
    clean = torch.stack([torch.zeros(20), torch.cat([torch.full((10,), 5.0), torch.full((10,), -5.0)])], 1)
    assert choose_offset(offset_table(clean, labels, (-1.0, 0.0, 1.0))) == 0.0


# --- copy-paste ----------------------------------------------------------------------------------
def test_copy_paste_masks_are_one_box_per_sample():
    gen = torch.Generator().manual_seed(0)
    masks = copy_paste_masks(4, (12, 9, 6), 0.5, gen)
    assert masks.shape == (4, 1, 12, 9, 6)
    boxes = []
    for b in range(4):
        idx = torch.nonzero(masks[b, 0])
        lo, hi = idx.min(0).values, idx.max(0).values
        assert (hi - lo + 1).tolist() == [6, 4, 3]  # round(0.5 * side), a solid box
        assert int(masks[b].sum()) == 6 * 4 * 3
        boxes.append(tuple(lo.tolist()))
    assert len(set(boxes)) > 1  # each sample its own box


def test_copy_paste_images_and_targets_both_directions():
    gen = torch.Generator().manual_seed(3)
    masks = copy_paste_masks(2, (6, 6, 6), 0.5, gen)
    u = torch.full((2, 1, 6, 6, 6), 10.0) + torch.arange(2.0).view(2, 1, 1, 1, 1)  # unlabeled: 10, 11
    x = torch.full((2, 1, 6, 6, 6), -1.0) - torch.arange(2.0).view(2, 1, 1, 1, 1)  # labeled: -1, -2
    into_labeled, into_unlabeled = copy_paste(u, x, masks)
    inside = masks > 0.5
    for b in range(2):
        assert torch.all(into_labeled[b][inside[b]] == 10 + b) and torch.all(into_labeled[b][~inside[b]] == -1 - b)
        assert torch.all(into_unlabeled[b][inside[b]] == -1 - b) and torch.all(into_unlabeled[b][~inside[b]] == 10 + b)
    pseudo = torch.full((2, 6, 6, 6), 2)
    labels = torch.full((2, 6, 6, 6), 1)
    t_in, p_in, t_out, p_out = copy_paste_targets(pseudo, labels, masks)
    box = inside[:, 0]
    assert torch.all(t_in[box] == 2) and torch.all(t_in[~box] == 1)  # pseudo inside, true label outside
    assert torch.all(t_out[box] == 1) and torch.all(t_out[~box] == 2)  # the reverse direction
    assert torch.equal(p_in, inside) and torch.equal(p_out, ~inside)
    # the stitched views: U's voxels each once among labeled context, and X's likewise
    assert torch.equal(stitch(into_labeled, into_unlabeled, masks), u)
    assert torch.equal(stitch(into_unlabeled, into_labeled, masks), x)
    # labeled batch smaller than the unlabeled one: partners cycle
    a, _ = copy_paste(u, x[:1], masks)
    assert torch.all(a[1][~inside[1]] == -1)


def test_rare_boost_is_near_one_for_similar_classes_and_lifts_rare_organs():
    hippo = rare_boost_weights(np.array([0.97, 0.016, 0.014]), 0.25)
    assert hippo[0] == 1 and torch.allclose(hippo, torch.tensor([1.0, 1.0, 1.034]), atol=2e-3)
    organs = rare_boost_weights(np.array([0.904, 0.06, 0.008, 0.008, 0.02]), 0.5)
    assert organs[1] == 1 and organs[2] == pytest.approx(np.sqrt(7.5)) and organs[4] == pytest.approx(np.sqrt(3))
    p = torch.tensor([0.5, 0.1, 0.4, 0.0, 0.0]).view(1, 5, 1, 1, 1)
    boosted = boost_probabilities(p, organs)
    assert boosted.sum() == pytest.approx(1.0) and boosted.argmax(1).item() == 2  # the rare kidney wins
    rows = torch.tensor([[0, .5, .5, 0, 0], [0, 0, 0, 0, 1.0], [0, 0, 0, 1.0, 0], [0, 0, 1.0, 0, 0], [0, 1.0, 0, 0, 0]])
    t = soft_pseudo_targets(boosted, 0.1, rows)[0, :, 0, 0, 0]
    assert t.tolist() == pytest.approx([0, 0, 0.9, 0.1, 0])  # the smoothing goes to the similar (other) kidney


def test_old_soft_label_names_still_load():
    cfg = EngineConfig.from_dict({"train": {"soft": {"similarity_smoothing": False, "rare_class_boost": False,
                                                     "calibration": False, "rare_class_power": 0.5}}})
    assert cfg.train.soft == SoftLabelConfig(similarity=False, rare_boost=False, calibrate=False, rare_power=0.5)
    with pytest.raises(ValueError):
        EngineConfig.from_dict({"train": {"synergy": {"mix": "cutmix"}}})


# --- tiny trainer ----------------------------------------------------------------------------------
def _tiny_cases(n: int, labeled: bool, rng: np.random.Generator) -> list[LoadedCase]:
    cases = []
    for i in range(n):
        lab = np.zeros((16, 16, 16), np.uint8)
        c = rng.integers(5, 11, size=3)
        lab[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
        img = (lab + rng.normal(0, 0.3, lab.shape)).astype(np.float32)[None]
        cases.append(LoadedCase(f"c{i}", img, lab if labeled else None, Volume(np.broadcast_to(np.uint8(0), lab.shape))))
    return cases


def _tiny(method: str = "synergypl", iterations: int = 6, **train) -> EngineConfig:
    cfg = EngineConfig(classes=["background", "blob"])
    cfg.model.channels = (4, 8)
    cfg.model.strides = (2,)
    cfg.train.method = method
    cfg.train.patch_size = (16, 16, 16)
    cfg.train.iterations = iterations
    cfg.train.val_every = 2
    cfg.train.checkpoint_every = 2
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    return _tiny_cases(2, True, rng), _tiny_cases(3, False, rng), _tiny_cases(1, True, rng)


@pytest.mark.parametrize("method", ["mean_teacher", "synergypl"])
def test_warm_start_hands_over_a_copy_of_the_student(method, tmp_path):
    lab, unl, val = _data()
    tr = Trainer(_tiny(method, iterations=8, warmup_fraction=0.5), lab, unl, val, tmp_path)
    assert tr.warmup_iters == 4
    for _ in range(4):
        assert not tr.handed_over
        losses = tr.step()
        assert losses["unlabeled"] == 0.0 and losses["weight"] == 0.0  # supervised only before the hand-over
    assert tr.handed_over
    for t, s in zip(tr.teacher.state_dict().values(), tr.student.state_dict().values(), strict=True):
        assert torch.equal(t, s)  # a copy, not an EMA from scratch
    losses = tr.step()
    assert losses["weight"] == pytest.approx(np.exp(-5))  # the ramp-up starts at the hand-over
    assert losses["unlabeled"] > 0
    if method == "synergypl":
        assert tr.bar_info["source"] == "validation" and tr.bar_info["iteration"] == 4
        assert tr.tau in tr.tc.synergy.tau_grid and tr.bar_info["temperature_fitted"]
        assert tr.pseudo_offset == tr.bar_info["offset"] and tr.pseudo_offset in tr.tc.synergy.offset_grid
        assert [r["offset"] for r in tr.bar_info["offset_table"]] == list(tr.tc.synergy.offset_grid)


@pytest.mark.parametrize("track", [False, True])
def test_tracked_offset_is_chosen_again_at_every_validation_after_the_hand_over(track, tmp_path, monkeypatch):
    lab, unl, val = _data()
    cfg = _tiny("synergypl", iterations=8, warmup_fraction=0.25)
    cfg.train.synergy.track_offset = track
    tr = Trainer(cfg, lab, unl, val, tmp_path)
    chosen = iter([0.5, 2.0, -1.0, 1.5])  # what validation "says" at each validation after the hand-over
    monkeypatch.setattr(trainer_mod, "choose_offset", lambda table: next(chosen))
    used = []
    real = tr._offset
    monkeypatch.setattr(tr, "_offset", lambda logits, offset, dim: used.append((tr.iteration, offset))
                        or real(logits, offset, dim))
    tr.run()
    track_log = tr.bar_info.get("offset_track", [])
    if not track:  # chosen once, at the hand-over (iteration 2)
        assert track_log == [] and tr.pseudo_offset == tr.bar_info["offset"] == 0.5
        assert {o for it, o in used if it >= 2} == {0.5}
        return
    # hand-over at 2 chose 0.5; validations at 4, 6, 8 chose 2.0, -1.0, 1.5 (the grid's volume ratio kept)
    assert [(r["iteration"], r["offset"]) for r in track_log] == [(4, 2.0), (6, -1.0), (8, 1.5)]
    assert all(r["volume_ratio"] >= 0 for r in track_log)
    assert tr.pseudo_offset == tr.bar_info["offset"] == 1.5
    # the pseudo labels of each step used the offset chosen at the last validation before it
    assert {o for it, o in used if 2 <= it < 4} == {0.5} and {o for it, o in used if 4 <= it < 6} == {2.0}
    assert {o for it, o in used if 6 <= it < 8} == {-1.0}
    assert load_checkpoint(tmp_path / "model.pt")["metrics"]["synergy_bar"]["offset_track"] == track_log


def test_fine_tuning_round_skips_the_warm_start(tmp_path):
    lab, unl, val = _data()
    first = Trainer(_tiny("synergypl", iterations=2), lab, unl, val, tmp_path / "a").run()
    tr = Trainer(_tiny("synergypl", iterations=2, warmup_fraction=0.5), lab, unl, val, tmp_path / "b",
                 init_checkpoint=first.checkpoint)
    assert tr.warmup_iters == 0 and tr.handed_over
    assert tr.bar_temperature == pytest.approx(load_checkpoint(first.checkpoint)["temperature"])
    res = tr.run()
    assert load_checkpoint(res.checkpoint)["metrics"]["synergy_bar"]["source"] == "validation"


def test_fine_tuning_round_keeps_the_heatmap_view_and_refits_the_error_model(tmp_path):
    rng = np.random.default_rng(3)
    lab, unl, val = _tiny_cases(2, True, rng), _tiny_cases(2, False, rng), _tiny_cases(2, True, rng)
    first = Trainer(_tiny("synergypl", iterations=2), lab, unl, val, tmp_path / "a").run()
    before = load_checkpoint(first.checkpoint)
    assert before["error_model"]["view"] in set(before["metrics"]["heatmap_validation"]["cv"])
    assert len(before["metrics"]["heatmap_validation"]["cv"]) > 2  # the first round searches the views
    tr = Trainer(_tiny("synergypl", iterations=2), lab, unl, val, tmp_path / "b", init_checkpoint=first.checkpoint)
    assert tr.error_views == (before["error_model"]["view"],)
    after = load_checkpoint(tr.run().checkpoint)
    assert after["error_model"]["view"] == before["error_model"]["view"]
    assert set(after["metrics"]["heatmap_validation"]["cv"]) <= {before["error_model"]["view"], "entropy"}
    assert after["error_model"]["coef"] != before["error_model"]["coef"]  # refitted for the new model


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_calibration_fitted_once_stored_and_never_applied_to_student_logits(warmup, tmp_path, monkeypatch):
    lab, unl, val = _data(1)
    fits = []
    real_fit = trainer_mod.fit_temperature
    monkeypatch.setattr(trainer_mod, "fit_temperature", lambda *a, **k: fits.append(real_fit(*a, **k)) or fits[-1])
    seen = []
    real_regions = trainer_mod.teacher_regions
    monkeypatch.setattr(trainer_mod, "teacher_regions", lambda pu, pm, tp, tau: (seen.append(pu), real_regions(pu, pm, tp, tau))[1])
    tr = Trainer(_tiny("synergypl", iterations=8, warmup_fraction=warmup), lab, unl, val, tmp_path)
    tr.bar_temperature = 0.5  # a teacher temperature far from 1: the student's probabilities must not see it
    logits_seen = []
    real_loss = tr.regional
    tr.regional = lambda logits, *a: (logits_seen.append(logits.detach()), real_loss(logits, *a))[1]
    res = tr.run()
    # one fit for the model at the end (+ one at the hand-over with a warm start), however often it validated
    assert len(fits) == (2 if warmup else 1) and len(res.history) == 4
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt["temperature"] == pytest.approx(fits[-1]) == pytest.approx(res.temperature)
    assert ckpt["metrics"]["fitted_temperature"] == pytest.approx(fits[-1])
    assert ckpt["metrics"]["synergy_bar"]["temperature"] == pytest.approx(fits[0] if warmup else 0.5)
    assert seen and all(torch.allclose(pu, torch.softmax(lg, 1)) for pu, lg in zip(seen, logits_seen[::2], strict=True))


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_lr_decay_reaches_its_final_value_and_survives_resume(schedule, tmp_path):
    lab, unl, val = _data(2)
    cfg = _tiny("supervised", iterations=6, lr_schedule=schedule, lr_min_fraction=0.05)
    straight = []
    tr = Trainer(cfg, lab, unl, val, tmp_path / "a")
    tr.run(on_progress=lambda e: straight.append(e.losses.get("lr")) if "lr" in e.losses else None)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.train.lr * 0.05)
    assert straight[0] == pytest.approx(cfg.train.lr) and all(a > b for a, b in zip(straight, straight[1:], strict=False))
    if schedule == "cosine":
        assert straight[3] == pytest.approx(0.05 * cfg.train.lr + 0.95 * cfg.train.lr * (1 + np.cos(np.pi / 2)) / 2)
    lrs = []
    Trainer(cfg, lab, unl, val, tmp_path / "b").run(should_stop=lambda: len(lrs) >= 3,
                                                     on_progress=lambda e: lrs.append(e.losses["lr"]) if "lr" in e.losses else None)
    resumed = Trainer(cfg, lab, unl, val, tmp_path / "b")
    resumed.run(resume=True, on_progress=lambda e: lrs.append(e.losses["lr"]) if "lr" in e.losses else None)
    assert lrs == pytest.approx(straight)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.train.lr * 0.05)


# --- augmentation -------------------------------------------------------------------------------------
def test_augmentation_keeps_image_and_label_aligned():
    label = torch.zeros(3, 20, 24, 16, dtype=torch.long)
    label[:, 5:15, 6:18, 4:12] = 1
    label[:, 8:11, 9:13, 6:9] = 2
    aug = Augmenter(AugmentConfig(prob=1.0, rotate_degrees=15, scale=0.15), np.random.default_rng(0))
    image, moved = aug.geometry(label[:, None].float(), label)  # the label as the image
    assert moved.dtype == torch.long and set(moved.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(moved, label)  # it did move
    as_image = image[:, 0].round().long()
    agree = (as_image == moved).float().mean()
    assert agree > 0.97, agree  # bilinear vs nearest differ only on the boundary
    interior = (image[:, 0] - image[:, 0].round()).abs() < 1e-4
    assert torch.equal(as_image[interior], moved[interior])
    for b in range(3):  # the same transform for image and label: the class-2 block's centres match
        assert torch.allclose(torch.nonzero(as_image[b] == 2).float().mean(0), torch.nonzero(moved[b] == 2).float().mean(0), atol=0.5)


def test_augmentation_is_deterministic_for_a_seed_and_flips_only_when_allowed():
    x = torch.randn(2, 1, 12, 12, 12)
    y = (x[:, 0] > 0).long()
    runs = []
    for seed in (5, 5, 6):
        aug = Augmenter(AugmentConfig(), np.random.default_rng(seed))
        xa, ya = aug.geometry(x, y)
        runs.append((aug.intensity(xa), ya))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    still = Augmenter(AugmentConfig(prob=0.0, intensity_scale=0, intensity_shift=0, noise_std=0), np.random.default_rng(0))
    xa, ya = still.geometry(x, y)
    assert torch.allclose(xa, x, atol=1e-5) and torch.equal(ya, y)  # no flips unless the config allows them
    mirror = Augmenter(AugmentConfig(prob=0.0, flip_axes=(0,)), np.random.default_rng(1))
    flipped = [torch.equal(mirror.geometry(x, y)[1], y.flip(1)) for _ in range(8)]
    assert any(flipped) and not all(flipped)
    off = Augmenter(AugmentConfig(enabled=False), np.random.default_rng(0))
    assert off.geometry(x, y)[0] is x and off.intensity(x) is x


# --- one short real run ------------------------------------------------------------------------------
@pytest.mark.data
def test_short_real_run_copy_paste_with_warm_start(hippocampus_dir, tmp_path):
    from SynergyPLLib.engine.config import profile_config
    from SynergyPLLib.engine.data import Preprocessor, load_cases, load_decathlon
    from SynergyPLLib.engine.inference import Predictor
    from SynergyPLLib.engine.io import read_volume

    classes, cases = load_decathlon(hippocampus_dir)
    cfg = profile_config("cpu", classes)
    cfg.train.method = "synergypl"
    cfg.train.synergy.mix = "copy_paste"
    cfg.train.iterations = 40
    cfg.train.warmup_fraction = 0.5
    cfg.train.val_every = 20
    pre = Preprocessor(cfg.preprocess)
    lab = load_cases(cases[:4], pre, 3)
    unl = load_cases(cases[4:12], pre, 3, labeled=False)
    val = load_cases(cases[-3:], pre, 3)
    tr = Trainer(cfg, lab, unl, val, tmp_path)
    start = tr.validate()
    events = []
    res = tr.run(on_progress=events.append)
    assert res.iterations == 40 and not res.cancelled and res.best_val_dice > start
    assert [e.losses["weight"] for e in events if e.phase == "train"][:19] == [0.0] * 19
    assert all(e.losses["unlabeled"] > 0 for e in events if e.phase == "train" and e.iteration > 21)
    ckpt = load_checkpoint(res.checkpoint)
    bar = ckpt["metrics"]["synergy_bar"]
    assert ckpt["metrics"]["warmup_iterations"] == 20 and bar["iteration"] == 20 and bar["source"] == "validation"
    assert 0.05 <= ckpt["temperature"] <= 20 and len(bar["table"]) == len(cfg.train.synergy.tau_grid)
    pred = Predictor.from_checkpoint(res.checkpoint).predict(read_volume(cases[-1].image), heatmap=True)
    assert pred.label.shape == read_volume(cases[-1].image).shape and pred.heatmap is not None


@pytest.mark.parametrize("switch", [
    {"synergy": {"mix": "mixup"}}, {"synergy": {"bar": "margin"}}, {"synergy": {"select_tau": False}},
    {"soft": {"similarity": False}}, {"soft": {"rare_boost": False}}, {"soft": {"calibrate": False}},
    {"augment": {"enabled": False}}, {"lr_schedule": "none"},
])
def test_every_ablation_switch_trains(switch, tmp_path):
    lab, unl, val = _data(3)
    cfg = _tiny("synergypl", iterations=4, warmup_fraction=0.5)
    cfg = EngineConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], **{
        k: ({**cfg.to_dict()["train"][k], **v} if isinstance(v, dict) else v) for k, v in switch.items()}}})
    res = Trainer(cfg, lab, unl, val, tmp_path).run()
    ckpt = load_checkpoint(res.checkpoint)
    assert res.iterations == 4 and np.isfinite(res.history[-1]["total"]) and res.history[-1]["unlabeled"] >= 0
    if switch == {"soft": {"calibrate": False}}:
        assert ckpt["temperature"] == 1.0 and ckpt["metrics"]["synergy_bar"]["temperature"] == 1.0
    if switch == {"synergy": {"select_tau": False}}:
        assert ckpt["metrics"]["synergy_bar"]["tau"] == cfg.train.synergy.tau
