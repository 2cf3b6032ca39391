"""Pictures of what the radiologist sees, for the README and docs/slicer.md.

- Slice views: Slicer's own slice rendering (slicer-core + trame-slicer, offscreen EGL) of a scene built
  by the panel's code (``LabelingLogic`` against a live server): the volume, the confidence heatmap as
  the foreground layer with its colour bar, the segmentation outlines, centred on the top flagged region.
- The panel: the .ui file rendered with PySide6 (offscreen), Slicer's ctk/qMRML widgets replaced by
  their plain Qt look-alikes, filled with the state of that same session.

    python Testing/slicer/screenshots.py --url http://127.0.0.1:8765 \\
        --image ../shared/data/hippocampus/imagesTr/hippocampus_050.nii.gz --out Resources/Screenshots

Needs the dev extras ``slicer-layer-dm`` and ``trame-slicer`` (and PySide6-Essentials for the panel).
"""

from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
for _entry in (str(REPO / "SynergyPL"), str(REPO)):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

VIEWS = (("axial", "Red"), ("sagittal", "Yellow"), ("coronal", "Green"))


# ------------------------------------------------------------------------------------------------
# Slice views (Slicer's rendering, offscreen)
# ------------------------------------------------------------------------------------------------
def make_slicer_app(size: int = 360):
    """A trame-slicer application with three offscreen slice views; sets ``slicer.mrmlScene``."""
    import slicer
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    app = SlicerApp()
    slicer.mrmlScene = app.scene
    app.scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # as Slicer's Colors module does
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    have = {factory.GetConverterRules().GetItemAsObject(i).GetName()
            for i in range(factory.GetConverterRules().GetNumberOfItems())} \
        if hasattr(factory.GetConverterRules(), "GetNumberOfItems") else set()
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(),
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule()):
        if rule.GetName() not in have:
            factory.RegisterConverterRule(rule)
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = {}
    for label, definition in ((name, getattr(ViewLayoutDefinition, f"{name}_view")()) for name, _ in VIEWS):
        view = app.view_manager.create_view(definition)
        view.render_window().SetSize(size, size)
        views[label] = view
    return app, views


def render_view(view, fit: bool = True) -> np.ndarray:
    """One slice view as an RGB array (rows top to bottom)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

    if fit:
        view.fit_view_to_content()
    view.render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(view.render_window())
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


def zoom_views(views: dict, factor: float) -> None:
    """Zoom every slice view in around its centre (field of view / factor)."""
    for view in views.values():
        node = view.mrml_view_node if hasattr(view, "mrml_view_node") else view._view_node
        fov = node.GetFieldOfView()
        node.SetFieldOfView(fov[0] / factor, fov[1] / factor, fov[2])


def compose(images: list[np.ndarray], titles: list[str], path: Path, caption: str = "") -> Path:
    """Side-by-side views with titles, saved as a small PNG."""
    from PIL import Image, ImageDraw

    gap, header, footer = 6, 26, 24 if caption else 0
    height = max(i.shape[0] for i in images)
    width = sum(i.shape[1] for i in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height + header + footer), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for image, title in zip(images, titles, strict=True):
        canvas.paste(Image.fromarray(image), (x, header))
        draw.text((x + 8, 7), title, fill=(235, 235, 235))
        x += image.shape[1] + gap
    if caption:
        draw.text((8, height + header + 5), caption, fill=(200, 200, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(colors=200, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


# ------------------------------------------------------------------------------------------------
# The panel (.ui rendered with PySide6)
# ------------------------------------------------------------------------------------------------
PLAIN_QT = {"ctkCollapsibleButton": "QGroupBox", "ctkCollapsibleGroupBox": "QGroupBox",
            "ctkPathLineEdit": "QLineEdit", "ctkSliderWidget": "QSlider", "qMRMLNodeComboBox": "QComboBox",
            "qMRMLWidget": "QWidget"}
DROP = {"collapsed", "filters", "settingKey", "nodeTypes", "showChildNodeTypes", "noneEnabled", "addEnabled",
        "removeEnabled", "renameEnabled", "decimals", "singleStep", "minimum", "maximum", "value",
        "SlicerParameterName"}


def plain_qt_ui(ui_file: Path) -> bytes:
    """The .ui with Slicer's custom widgets swapped for plain Qt ones (what QUiLoader can build)."""
    tree = ET.parse(ui_file)
    root = tree.getroot()
    for widget in root.iter("widget"):
        original = widget.get("class")
        if original not in PLAIN_QT:
            continue
        widget.set("class", PLAIN_QT[original])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if name in DROP:
                widget.remove(prop)
            elif name == "text" and original == "ctkCollapsibleButton":
                prop.set("name", "title")
        if original == "ctkSliderWidget":
            orientation = ET.SubElement(widget, "property", name="orientation")
            ET.SubElement(orientation, "enum").text = "Qt::Horizontal"
    for layout in root.iter("layout"):  # no stretch at the bottom: the picture ends with the panel
        for item in list(layout.findall("item")):
            if item.find("spacer") is not None:
                layout.remove(item)
    customs = root.find("customwidgets")
    if customs is not None:
        root.remove(customs)
    connections = root.find("connections")
    if connections is not None:
        root.remove(connections)
    return ET.tostring(root, encoding="utf-8")


def render_panel(ui_file: Path, state: dict, path: Path, width: int = 400) -> Path:
    """Render the panel filled with ``state`` (texts, table rows, slider values) to a PNG."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import (
        QAbstractItemView,
        QApplication,
        QComboBox,
        QGroupBox,
        QHeaderView,
        QLabel,
        QLineEdit,
        QPlainTextEdit,
        QProgressBar,
        QPushButton,
        QSlider,
        QSpinBox,
        QTableWidget,
        QTableWidgetItem,
    )

    app = QApplication.instance() or QApplication([])
    app.setStyle("Fusion")
    data = QByteArray(plain_qt_ui(ui_file))  # keep references: PySide does not own these for load()
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    loader = QUiLoader()
    panel = loader.load(buffer)
    if panel is None:
        raise RuntimeError(f"QUiLoader could not build {ui_file}: {loader.errorString()}")
    find = {cls: (lambda name, cls=cls: panel.findChild(cls, name)) for cls in
            (QLabel, QLineEdit, QPushButton, QComboBox, QSlider, QSpinBox, QProgressBar, QTableWidget, QGroupBox,
             QPlainTextEdit)}
    for name, text in state.get("labels", {}).items():
        find[QLabel](name).setText(text)
    for name, text in state.get("line_edits", {}).items():
        find[QLineEdit](name).setText(text)
    for name, items in state.get("combos", {}).items():
        combo = find[QComboBox](name)
        combo.clear()
        combo.addItems(items)
    for name, value in state.get("sliders", {}).items():
        slider = find[QSlider](name)
        slider.setRange(0, 100)
        slider.setValue(int(round(100 * value)))
    for name, value in state.get("progress", {}).items():
        find[QProgressBar](name).setValue(value)
    for name in state.get("disabled", []):
        find[QPushButton](name).setEnabled(False)
    find[QProgressBar]("activityProgressBar").setVisible(False)
    local = find[QGroupBox]("localServerGroupBox")
    if local is not None and state.get("collapse_local_server", True):
        local.setVisible(False)
    export = find[QGroupBox]("exportCollapsibleButton")
    if export is not None:
        export.setVisible(state.get("show_export", True))
    table = find[QTableWidget]("regionsTable")
    table.verticalHeader().setVisible(False)
    table.setSelectionBehavior(QAbstractItemView.SelectRows)
    rows = state.get("regions", [])
    table.setRowCount(len(rows))
    for row, values in enumerate(rows):
        tick = QTableWidgetItem()
        tick.setCheckState(Qt.Checked if values[0] else Qt.Unchecked)
        table.setItem(row, 0, tick)
        for column, text in enumerate(values[1:], start=1):
            table.setItem(row, column, QTableWidgetItem(text))
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    table.setFixedHeight(min(6, len(rows)) * 24 + 30)
    if rows:
        table.selectRow(state.get("selected_region", 0))
    panel.resize(width, 100)
    panel.adjustSize()
    panel.resize(width, panel.sizeHint().height())
    image = panel.grab().toImage()
    path.parent.mkdir(parents=True, exist_ok=True)
    out = QBuffer()
    out.open(QIODevice.WriteOnly)
    image.save(out, "PNG")
    from io import BytesIO

    from PIL import Image

    Image.open(BytesIO(bytes(out.data()))).convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path


# ------------------------------------------------------------------------------------------------
# The session the pictures show
# ------------------------------------------------------------------------------------------------
def run_session(url: str, image: Path, out: Path, size: int = 360, project: Path | None = None) -> list[Path]:
    """Upload + pseudo-label ``image`` with the panel's logic, then render the views and the panel."""
    import scene_checks
    from SynergyPLModuleLib.logic import LabelingLogic
    from SynergyPLModuleLib.scene import (
        files,
        heatmap_layer,
        ownership,
        segmentations,
        slice_views,
        transforms,
        volumes,
    )

    app, views = make_slicer_app(size)
    logic = LabelingLogic(scene=app.scene)
    statuses = []
    logic.status.connect(statuses.append)
    logic.error.connect(lambda action, message: statuses.append(f"ERROR {action}: {message}"))
    logic.configure(url, project=project)  # the server's token from its project folder
    volume = files.read_volume_file(image, scene=app.scene)
    produced = {}
    logic.prediction_ready.connect(lambda seg, heat: produced.update(seg=seg, heat=heat))
    logic.pseudo_label(volume, opacity=0.6)
    if not logic.runner.wait(timeout=900) or "seg" not in produced:
        raise SystemExit(f"pseudo-label failed: {statuses[-3:]}")
    segmentation, heatmap = produced["seg"], produced["heat"]
    # Offscreen, trame-slicer does not blend the segment *fill* with the image (it paints over black),
    # so the pictures draw outlines from the segmentation and the fill through the label layer, which
    # Slicer's slice logic blends like the fill looks in Slicer.
    segmentation.GetDisplayNode().SetOpacity2DFill(0.0)
    segmentation.GetDisplayNode().SetOpacity2DOutline(1.0)
    heatmap_layer.set_heatmap_visible(heatmap, True, 0.6, app.scene)
    logic.set_threshold(0.5, heatmap_node=heatmap)
    logic.runner.wait(timeout=120)  # regions not from the server are found by a background task
    focus = next((i for i, r in enumerate(logic.regions)
                  if any(c != "background" for c in r.classes)), 0) if logic.regions else None
    written = []

    def shot(name: str, caption: str) -> None:
        import slicer

        legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(heatmap)
        if legend is not None:  # small views: one compact colour bar, in the axial view only
            legend.SetViewNodeIDs([views["axial"]._view_node.GetID()])
            legend.SetSize(0.07, 0.45)
            legend.SetPosition(0.98, 0.5)
            legend.Modified()  # the legend's displayable manager places its bar on the next update
        for label, _ in VIEWS:
            views[label].render()
        images = [render_view(views[label], fit=False) for label, _ in VIEWS]
        written.append(compose(images, [f"{label}" for label, _ in VIEWS], out / name, caption))

    for view in views.values():
        view.fit_view_to_content()
    if focus is not None:
        logic.go_to_region(focus, volume)
    zoom_views(views, 1.4)
    shot("slice_views.png", f"Pseudo-label of {volume.GetName()} (model v{logic.model_version}): confidence "
                            "heatmap (red = unsure) over the image, segment outlines, centred on a flagged region")
    heatmap_layer.set_heatmap_visible(heatmap, False, 0.6, app.scene)
    classes = logic.server.classes
    label, _ = segmentations.segmentation_to_labelmap(segmentation, volume, classes, app.scene)
    fill = volumes.add_volume_from_array(label, transforms.ijk_to_ras(volume), "fill", "vtkMRMLLabelMapVolumeNode", app.scene)
    fill.GetDisplayNode().SetAndObserveColorNodeID(scene_checks.class_color_table(classes, scene=app.scene).GetID())
    for composite in slice_views.slice_composite_nodes(app.scene):
        composite.SetLabelVolumeID(fill.GetID())
        composite.SetLabelOpacity(0.4)
    shot("segmentation.png", "The same views with the heatmap hidden: the editable segmentation (Anterior, Posterior)")

    server = logic.server
    from SynergyPLModuleLib.logic import TrainingProgress, training_summary

    rounds = logic._client().jobs(kind="train", limit=1)
    progress = TrainingProgress.from_job(rounds[0]) if rounds else None
    regions = [(i == 0, str(r.rank), f"{r.volume_ml:.3f}", f"{r.mean_confidence:.2f}",
                ", ".join(c for c in r.classes if c != "background") or "background", r.likely_error)
               for i, r in enumerate(logic.regions[:8])]
    state = {
        "labels": {"serverStatusLabel": server.summary(), "caseIdLabel": ownership.case_id(volume) or "",
                   "modelVersionLabel": f"model: v{logic.model_version}",
                   "regionsSummaryLabel": f"1 of {len(logic.regions)} reviewed",
                   "labelVersionLabel": "label: from v0",
                   "trainingStatusLabel": f"Done: {training_summary(rounds[0])}." if rounds else "Idle.",
                   "statusLabel": statuses[-1] if statuses else ""},
        "line_edits": {"serverUrlLineEdit": url, "authorLineEdit": "Dr. A. Radiologist",
                       "exportFolderLineEdit": "~/SynergyPL/exports"},
        "combos": {"inputVolumeSelector": [volume.GetName()], "segmentationSelector": [segmentation.GetName()],
                   "exportFormatComboBox": ["seg.nrrd", "nifti", "dicom-seg"]},
        "sliders": {"opacitySlider": 0.6, "thresholdSlider": 0.5},
        "progress": {"trainingProgressBar": int(round(100 * progress.fraction)) if progress else 0},
        "disabled": ["cancelTrainingButton", "stopServerButton", "cancelActivityButton"],
        "regions": regions,
    }
    written.append(render_panel(REPO / "SynergyPL" / "Resources" / "UI" / "SynergyPL.ui", state, out / "panel.png"))
    logic.shutdown()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="a SynergyPL server with a trained model")
    parser.add_argument("--project", type=Path, default=None, help="the server's project folder (for its token)")
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots")
    parser.add_argument("--size", type=int, default=360)
    args = parser.parse_args(argv)
    for path in run_session(args.url, args.image, args.out, args.size, args.project):
        print(f"{path}  {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
