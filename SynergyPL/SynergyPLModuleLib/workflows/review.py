"""Review: the confidence threshold, the flagged regions, moving between them and ticking them.

A piece of :class:`~SynergyPLModuleLib.logic.LabelingLogic`: its state (client, scene nodes,
current case) and signals are the facade's, shared by every piece; results go out through signals only.
"""

from __future__ import annotations

import json

import numpy as np

from SynergyPLLib.common.regions import Region, RegionParams, flag_regions, keep_reviewed

from .. import grids
from ..background import CallContext
from ..scene import attributes, heatmap_layer, navigation
from .base import CASE_GRID_ATTRIBUTE, LogicBase, PredictionState


class ReviewWorkflow(LogicBase):
    """Review: threshold, flagged regions, moving between them, reviewed ticks.

    Mixed into the facade (:class:`~SynergyPLModuleLib.logic.LabelingLogic`), whose state and signals it uses.
    """

    def class_names(self) -> list[str]:
        names = ["background"]
        for cls in self.server.classes if self.server else self._restored_classes:
            while len(names) <= cls.value:
                names.append(f"label {len(names)}")
            names[cls.value] = cls.name
        return names

    def set_threshold(self, threshold: float, heatmap_node=None, force: bool = False) -> None:
        """Change the confidence threshold: the heatmap display at once, and the flagged regions.

        The regions arrive through ``regions_changed``: at once when they are the server's (its flag
        threshold), else from a background task (``regions``: the connected components of a large CT
        take seconds). Moving the slider while one runs recomputes for the latest threshold only.
        Reviewed ticks stay on the regions that did not change.
        """
        threshold = float(threshold)
        changed = force or abs(threshold - self.threshold) > 1e-9
        self.threshold = threshold
        if heatmap_node is not None:
            heatmap_layer.set_heatmap_threshold(heatmap_node, threshold)
        if self.prediction is None or not changed:
            return
        state = self.prediction
        if state.server_threshold is not None and abs(state.server_threshold - threshold) < 1e-6 \
                and state.server_regions and self._server_regions_fit(state):
            self._set_regions([Region.from_dict(r.to_dict()) for r in state.server_regions], threshold)
            return
        self._recompute_regions()

    def _recompute_regions(self) -> None:
        """Find the regions of the current threshold on a worker thread (numpy only)."""
        state = self.prediction
        if state is None or self.is_busy("regions"):
            return  # the running task starts the next one when it ends (see done)
        wanted = self.region_params()
        names = self.class_names()

        def work(ctx: CallContext) -> list[Region]:
            return flag_regions(state.heatmap, state.label, state.ijk_to_ras, names, wanted)

        def done(fresh: list[Region]) -> None:
            if self.prediction is state and self.region_params() == wanted:
                self._set_regions(fresh, wanted.threshold)
            elif self.prediction is not None and not self._regions_are_current():
                self.set_threshold(self.threshold, force=True)  # the slider moved, or another prediction came

        self._start("regions", work, done)

    def region_params(self) -> RegionParams:
        """What the regions of the current threshold are found with: the prediction's minimum size and
        maximum count (sent by the server; ``min_region_voxels`` / ``max_regions`` override them)."""
        params = self.prediction.region_params if self.prediction is not None else RegionParams()
        return RegionParams.from_dict(params.to_dict(), threshold=self.threshold,
                                      min_voxels=self.min_region_voxels, max_regions=self.max_regions)

    def _regions_are_current(self) -> bool:
        """The shown regions are for the current threshold (e.g. the server's arrived meanwhile)."""
        return self.regions_threshold is not None and abs(self.regions_threshold - self.threshold) < 1e-9

    def _set_regions(self, fresh: list[Region], threshold: float) -> None:
        self.regions = keep_reviewed(self.regions, fresh)
        self.regions_threshold = threshold
        self.current_region = -1
        self._save_regions()
        self.regions_changed.emit(self.regions)

    def _save_regions(self) -> None:
        """Keep the regions and their reviewed ticks on the prediction's segmentation node (saved with the
        scene), so that they come back with it: after reloading the scene or choosing the volume again."""
        state = self.prediction
        node = self.scene.GetNodeByID(state.segmentation_id) if state is not None and state.segmentation_id else None
        if node is not None:
            node.SetAttribute(attributes.REGIONS_ATTRIBUTE, json.dumps(
                {"threshold": self.regions_threshold, "region_params": state.region_params.to_dict(),
                 "regions": [r.to_dict() for r in self.regions]}))

    def _server_regions_fit(self, state: PredictionState) -> bool:
        """The server's voxel indices are usable only when its grid is the volume's grid."""
        volume = self.scene.GetNodeByID(state.volume_id)
        text = volume.GetAttribute(CASE_GRID_ATTRIBUTE) if volume is not None else None
        if not text:
            return True
        matrix, shape = grids.grid_from_json(text)
        return shape == tuple(state.label.shape) and np.allclose(matrix, state.ijk_to_ras, atol=1e-3)

    def go_to_region(self, index: int, volume_node=None) -> Region | None:
        """Centre every slice view on region ``index`` (wraps around); returns it."""
        if not self.regions:
            return None
        index %= len(self.regions)
        region = self.regions[index]
        volume = volume_node
        if volume is None and self.prediction is not None:
            volume = self.scene.GetNodeByID(self.prediction.volume_id)
        navigation.center_slice_views_on(navigation.region_center_ras(region.to_dict(), volume), self.scene)
        self.current_region = index
        self.current_region_changed.emit(index)
        return region

    def next_region(self, step: int = 1) -> Region | None:
        start = self.current_region if self.current_region >= 0 else (-1 if step > 0 else 0)
        return self.go_to_region(start + step)

    def set_reviewed(self, index: int, reviewed: bool = True) -> None:
        if 0 <= index < len(self.regions):
            self.regions[index].reviewed = bool(reviewed)
            self._save_regions()
