"""The flagged regions of a real case, through Slicer's own slice views (docs/images/flagged_regions.png).

A hippocampus case of the validation split is predicted with a checkpoint (``Predictor.predict``, CPU);
its heatmap is the foreground layer (only voxels below the flag threshold are tinted), the predicted
label is outlined in its class colours, and the top flagged regions (pieces,
:func:`SynergyPLLib.common.regions.flag_regions`) are outlined as segments of their own and numbered by
rank, the views centred on region 1. The legend under the views gives each region's size, expected wrong
voxels and likely error. Rendering: slicer-core + trame-slicer offscreen (see screenshots.py).

    PYTHONPATH=$PWD:$PWD/SynergyPL python Testing/slicer/flagged_regions_picture.py \\
        --checkpoint docs/benchmarks/hippocampus/3-labeled/runs/synergypl_subset0_seed0/model.pt \\
        --data ../shared/data/hippocampus --out docs/images/flagged_regions.png

Without ``--case`` the first case of the validation split (seed 20240611) is shown. Also prints the
regions with and without splitting (counts, largest ml, time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
for _entry in (str(Path(__file__).resolve().parent), str(REPO / "SynergyPL"), str(REPO)):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

REGION_COLORS = ((0, 235, 255), (255, 70, 255), (120, 255, 60), (255, 255, 255), (255, 150, 190), (170, 130, 255))
LABEL_COLORS = {1: (255, 210, 0), 2: (0, 120, 255)}


def predict_case(checkpoint: Path, data: Path, case: str | None, split_seed: int = 20240611):
    """(case id, image path, Prediction) for ``case`` or the first validation case."""
    import torch

    from SynergyPLLib.engine.data import load_decathlon
    from SynergyPLLib.engine.inference import Predictor
    from SynergyPLLib.engine.io import read_volume
    from SynergyPLLib.harness.bench import make_split

    torch.set_num_threads(1)
    _, cases = load_decathlon(data)
    chosen = next(c for c in cases if c.id == case) if case else make_split(cases, split_seed).validation[0]
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    return chosen.id, chosen.image, predictor.predict(read_volume(chosen.image)), predictor.classes


def print_split_numbers(pred, classes) -> None:
    """Regions with and without the split, and how long flag_regions takes (median of 5)."""
    from SynergyPLLib.common.regions import RegionParams, flag_regions

    params = pred.region_params or RegionParams()
    for name, p in (("unsplit", RegionParams(params.threshold, params.min_voxels, params.max_regions, 1e9, 1e9)),
                    ("split", params)):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            found = flag_regions(pred.heatmap.array, pred.label.array, pred.heatmap.ijk_to_ras, classes, p)
            times.append(time.perf_counter() - start)
        print(f"{name}: {len(found)} regions, largest {max((r.volume_ml for r in found), default=0):.3f} ml, "
              f"flag_regions {1000 * float(np.median(times)):.1f} ms")


def outline_segments(masks, names, colors, volume, scene, name):
    """A segmentation node with one outlined segment per mask (value i + 1 = masks[i])."""
    from SynergyPLModuleLib.scene import segmentations, terminology

    label = np.zeros(masks[0].shape, np.uint8)
    for index, mask in enumerate(masks):
        label[mask & (label == 0)] = index + 1
    classes = terminology.classes_from_dicts(
        [{"value": i + 1, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(names, colors, strict=True))])
    node = segmentations.labelmap_to_segmentation(label, volume, classes, name=name, scene=scene)
    display = node.GetDisplayNode()
    display.SetOpacity2DFill(0.0)
    display.SetOpacity2DOutline(1.0)
    display.SetSliceIntersectionThickness(2)
    return node


def number_regions(image: np.ndarray, view, masks, ijk_to_ras: np.ndarray, colors) -> np.ndarray:
    """Draw each region's rank next to its voxels that lie in the view's slice."""
    from PIL import Image, ImageDraw, ImageFont
    from SynergyPLModuleLib.scene import transforms

    node = view._view_node
    ras_to_xy = np.linalg.inv(transforms.matrix_to_array(node.GetXYToRAS()))
    slice_to_ras = transforms.matrix_to_array(node.GetSliceToRAS())
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0).min()
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    height = image.shape[0]
    for index, mask in enumerate(masks):
        ijk = np.argwhere(mask)
        ras = (ijk_to_ras @ np.c_[ijk, np.ones(len(ijk))].T).T
        near = np.abs((ras[:, :3] - slice_to_ras[:3, 3]) @ normal) < 0.5 * spacing
        on_slice = (ras_to_xy @ ras[near].T).T
        if len(on_slice) == 0:
            continue
        x, y = on_slice[:, 0].max() + 4, height - 1 - on_slice[:, 1].mean()
        draw.text((float(x), float(y) - 9), str(index + 1), fill=tuple(colors[index]),
                  font=ImageFont.load_default(size=18), stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(canvas)


def render(case_id: str, image_path: Path, pred, classes, out: Path, top: int, size: int) -> Path:
    from PIL import Image, ImageDraw
    from screenshots import VIEWS, compose, make_slicer_app, render_view, zoom_views
    from SynergyPLModuleLib.scene import files, heatmap_layer, navigation, transforms, volumes

    from SynergyPLLib.common.regions import RegionParams, flag_regions, region_masks

    app, views = make_slicer_app(size)
    scene = app.scene
    volume = files.read_volume_file(image_path, scene=scene)
    matrix = transforms.ijk_to_ras(volume)
    if volumes.array_ijk(volume).shape != pred.heatmap.array.shape or \
            not np.allclose(matrix, pred.heatmap.ijk_to_ras, atol=1e-3):
        raise SystemExit("the prediction is not on the volume's grid")
    params = pred.region_params or RegionParams()
    found = flag_regions(pred.heatmap.array, pred.label.array, matrix, classes, params)[:top]
    masks = region_masks(pred.heatmap.array, found, params.threshold)
    heatmap = heatmap_layer.show_heatmap(pred.heatmap.array, volume, threshold=params.threshold, opacity=0.55,
                                         scene=scene)
    label = pred.label.array
    values = [v for v in sorted(set(np.unique(label).tolist()) - {0})]
    outline_segments([label == v for v in values], [classes[v] for v in values],
                     [LABEL_COLORS.get(v, (200, 200, 200)) for v in values], volume, scene, "prediction")
    colors = [REGION_COLORS[i % len(REGION_COLORS)] for i in range(len(found))]
    outline_segments(masks, [f"region {r.rank}" for r in found], colors, volume, scene, "flagged regions")
    legend = __import__("slicer").vtkSlicerColorLogic.GetColorLegendDisplayNode(heatmap)
    if legend is not None:
        legend.SetViewNodeIDs([views["axial"]._view_node.GetID()])
        legend.SetSize(0.07, 0.45)
        legend.SetPosition(0.98, 0.5)
        legend.Modified()
    for view in views.values():
        view.fit_view_to_content()
    navigation.center_slice_views_on(navigation.region_center_ras(found[0].to_dict(), volume), scene)
    zoom_views(views, 1.6)
    images = []
    for label_name, _ in VIEWS:
        views[label_name].render()
        images.append(number_regions(render_view(views[label_name], fit=False), views[label_name], masks, matrix,
                                     colors))
    for view in views.values():
        view.finalize()
    caption = (f"{case_id}: heatmap below {params.threshold:g} (red = unsure), predicted label outlined, "
               f"the top {len(found)} flagged regions (pieces of at most {params.max_region_ml:g} ml / "
               f"{params.max_region_mm:g} mm), centred on region 1")
    composed = compose(images, [name for name, _ in VIEWS], out, caption)
    # The legend: one line per region under the views.
    picture = Image.open(composed).convert("RGB")
    line = 16
    canvas = Image.new("RGB", (picture.width, picture.height + line * len(found) + 8), (24, 24, 28))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, region in enumerate(found):
        text = (f"{region.rank}: {region.volume_ml:.2f} ml, {region.score:.0f} expected wrong voxels, "
                f"likely error: {region.likely_error}, classes: {', '.join(region.classes)}")
        draw.text((8, picture.height + 4 + line * index), text, fill=colors[index])
    canvas.quantize(colors=200, dither=Image.Dither.NONE).save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "hippocampus")
    parser.add_argument("--case", default=None, help="a case id (default: the first validation case)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "flagged_regions.png")
    parser.add_argument("--top", type=int, default=5, help="how many regions to outline")
    parser.add_argument("--size", type=int, default=360)
    args = parser.parse_args(argv)
    case_id, image, pred, classes = predict_case(args.checkpoint, args.data, args.case)
    print_split_numbers(pred, classes)
    path = render(case_id, image, pred, classes, args.out, args.top, args.size)
    print(f"{path}  {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
