"""Every figure of the harnesses (matplotlib with the Agg backend: no display needed).

- :func:`dice_figure`: the benchmark's ``dice.png`` (per-method test Dice, one dot per run);
- :func:`heatmap_regions_figure`, :func:`annotator_curve_figure`: the demo's ``heatmap_regions.png``
  and ``annotator_curve.png``;
- :func:`effort_figure`: ``bench-effort``'s ``effort.png``; :func:`loop_figure`: ``bench-loop``'s ``loop.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dice_figure(results: dict, path: Path) -> None:
    """Per-method test Dice of ``results`` (bench ``results.json``): one dot per run (colour: labeled
    subset), the mean and the std over runs."""
    plt = _pyplot()
    summ = results["summary"]
    fig, ax = plt.subplots(figsize=(6.5, 3.5), dpi=110)
    names = list(summ)
    colours = plt.get_cmap("tab10")
    for i, m in enumerate(names):
        rs = [r for r in results["runs"] if r["method"] == m]
        for r in rs:
            ax.scatter(i + 0.06 * (r.get("subset", 0) - 1), r["dice_mean"], color=colours(r.get("subset", 0) % 10),
                       alpha=0.7, s=18)
        ax.errorbar(i, summ[m]["dice_mean"], yerr=summ[m]["dice_std"], fmt="_", color="black", capsize=6,
                    markersize=20)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test Dice (mean over classes)")
    subsets = len(results.get("split", {}).get("subsets", [])) or 1
    ax.set_title(f"{results['dataset']}: {results['labeled']} labeled x {subsets} subset(s), "
                 f"profile {results['profile']}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heatmap_regions_figure(path: Path, case) -> None:
    """One slice of a reviewed case: image, prediction with the truth outline, heatmap, flagged regions."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    case_id, image, arrays, gt, doc = case
    regions = doc["regions"]
    k = int(round(regions[0]["centroid_ijk"][2])) if regions else image.shape[2] // 2
    k = min(max(k, 0), image.shape[2] - 1)

    def sl(a):
        return np.asarray(a)[:, :, k].T  # rows = j, columns = i

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.8))
    axes[0].imshow(sl(image), cmap="gray")
    axes[0].set_title(f"{case_id}, slice k={k}")
    axes[1].imshow(sl(image), cmap="gray")
    axes[1].imshow(np.ma.masked_equal(sl(arrays["label"]), 0), cmap="autumn", alpha=0.5, vmin=0, vmax=2)
    axes[1].contour(sl(gt > 0), levels=[0.5], colors="cyan", linewidths=0.8)
    axes[1].set_title(f"prediction (v{doc['model_version']}), truth outline")
    im = axes[2].imshow(sl(arrays["heatmap"]), cmap="magma", vmin=0, vmax=1)
    axes[2].set_title("confidence heatmap (1 = certain)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[3].imshow(sl(image), cmap="gray")
    axes[3].imshow(np.ma.masked_equal(sl(arrays["heatmap"] < doc["flag_threshold"]), 0), cmap="cool", alpha=0.6)
    for r in regions[:10]:
        (i0, j0, k0), (i1, j1, k1) = r["bbox_ijk"]
        if k0 <= k <= k1:
            axes[3].add_patch(Rectangle((i0 - 0.5, j0 - 0.5), i1 - i0 + 1, j1 - j0 + 1, fill=False, lw=1.2,
                                        ec="yellow"))
            axes[3].text(i0, j0 - 1, f"#{r['rank']}", color="yellow", fontsize=8)
    axes[3].set_title("flagged regions (ranked boxes)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def annotator_curve_figure(path: Path, reviews, target: float) -> None:
    """Dice of each corrected label against the voxels the simulated annotator touched."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in reviews:
        xs = [t / max(1, r.full_review) for t, _ in r.curve]
        ax.plot(xs, [d for _, d in r.curve], marker="o", ms=3, label=r.case_id)
    ax.axhline(target, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("voxels touched / voxels of a full review (the review box)")
    ax.set_ylabel("Dice of the corrected label")
    ax.set_title("simulated annotator: flagged regions, then the box by heatmap")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def effort_figure(doc: dict, path: Path) -> None:
    """Median Dice of the corrected labels against effort (reviewed / review-box voxels), one line per
    guide of ``doc`` (bench-effort ``effort.json``), with each guide's median effort to the target."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    colours = plt.get_cmap("tab10")
    for i, (g, s) in enumerate(doc["guides"].items()):
        c = s["curve"]
        ax.step(c["effort"], c["median_dice"], where="post", color=colours(i),
                label=f"{g} (median effort {s['median_effort']:.3f}, {s['cases_reaching']}/{doc['cases']} reach)")
        ax.axvline(s["median_effort"], color=colours(i), ls=":", lw=0.8)
    ax.axhline(doc["target"], color="gray", ls="--", lw=0.8)
    ax.set_xlabel("effort: reviewed voxels / review-box voxels")
    ax.set_ylabel("Dice of the corrected label (median over cases)")
    ax.set_title(f"review effort to Dice {doc['target']:.2f}, {doc['cases']} case(s)", fontsize=9)
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def loop_figure(doc: dict, path: Path) -> None:
    """Held-out Dice per labeling round and against cumulative review effort, both workflows of ``doc``
    (bench-loop ``loop.json``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    rounds = doc["rounds"]
    for name, marker in (("synergypl", "o"), ("manual", "s")):
        xs = [r["round"] for r in rounds]
        ds = [r[name]["dice"] for r in rounds]
        axes[0].plot(xs, ds, marker=marker, label=name)
        axes[1].plot([r[name]["effort"] for r in rounds], ds, marker=marker, label=name)
    axes[0].set_xlabel("round")
    axes[0].set_xticks([r["round"] for r in rounds])
    axes[1].set_xlabel("cumulative review effort (one fully reviewed case = 1)")
    for ax in axes:
        ax.set_ylabel("held-out Dice")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("labeling rounds: SynergyPL (heatmap-guided review, semi-supervised fine-tuning) vs manual "
                 "(full review, supervised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
