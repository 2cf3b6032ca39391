"""A project's readable configuration file (``project.yaml``) and its folder layout.

``project.yaml`` holds the project name, the segment classes (value, name, colour, terminology), the
service options (upload limit, database URL, validation hold-out) and the engine configuration
(``engine:``, an :class:`~SynergyPLLib.engine.config.EngineConfig` without its ``classes``, which are
derived from ``classes:`` so they are written once).

Folder layout (all paths below the project folder)::

    project.yaml           this configuration
    synergypl.sqlite       the database (unless service.database_url points elsewhere)
    cases/<id>/image.nrrd  the image as stored on upload (geometry kept)
    cases/<id>/dicom/      the original DICOM files, when the image came from DICOM
    cases/<id>/labels/     label versions v0001-<uid>.nrrd (write-once)
    cases/<id>/predictions/job-<n>/   label.nrrd, heatmap.nrrd, regions.nrrd, regions.json
    models/job-<n>/        one training round: model.pt, state.pt (resume), result.json
    logs/                  service and worker logs
    tmp/                   uploads being checked (emptied at start)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from SynergyPLLib.engine.config import EngineConfig

from ...common.project_folder import check_project_folder
from .files import atomic_write_bytes

DATABASE_URL_ENV = "SYNERGYPL_DATABASE_URL"


class Code(BaseModel):
    scheme: str = "SCT"
    code: str
    meaning: str


class Terminology(BaseModel):
    category: Code
    type: Code
    typeModifier: Code | None = None  # noqa: N815 - Slicer's and DICOM's name


class ClassInfo(BaseModel):
    """One segment class; value 0 is background and is not listed."""

    value: int = Field(ge=1, le=255)
    name: str = Field(min_length=1)
    color: list[int] = Field(min_length=3, max_length=3)
    terminology: Terminology

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: list[int]) -> list[int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError("colour components must be 0-255")
        return v


class ServiceOptions(BaseModel):
    max_upload_mb: float = 512.0
    # what one uploaded image or label may declare (checked before it is decompressed or read)
    max_voxels: int = Field(2**28, ge=1)  # 268 million, e.g. 512 x 512 x 1024
    max_image_mb: float = Field(2048.0, gt=0)  # voxel data after decompression
    database_url: str | None = None  # None: sqlite file in the project folder
    validation_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    validation_seed: int = 0


class TrainingOptions(BaseModel):
    # processes (one per GPU) of a training round, launched with torchrun (see service/jobs/train_ddp.py);
    # the engine's batch sizes are per GPU
    gpus: int = Field(1, ge=1, le=64)


class ProjectConfig(BaseModel):
    name: str
    description: str = ""
    background: str = "background"
    classes: list[ClassInfo]
    service: ServiceOptions = Field(default_factory=ServiceOptions)
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    engine: dict[str, Any] = Field(default_factory=dict)
    dicomweb: dict[str, Any] | None = None  # a PACS the cases come from (docs/pacs.md; store/dicomweb.py)

    @field_validator("classes")
    @classmethod
    def _values(cls, v: list[ClassInfo]) -> list[ClassInfo]:
        values = [c.value for c in v]
        if not v:
            raise ValueError("a project needs at least one class besides background")
        if sorted(values) != list(range(1, len(v) + 1)):
            raise ValueError(f"class values must be 1..{len(v)} without gaps, got {values}")
        return sorted(v, key=lambda c: c.value)

    @property
    def num_classes(self) -> int:
        """Including background."""
        return len(self.classes) + 1

    def class_names(self) -> list[str]:
        """Names indexed by label value (0 = background)."""
        return [self.background] + [c.name for c in self.classes]

    def engine_config(self) -> EngineConfig:
        """The engine configuration with this project's classes.

        ``preprocess.orientation: null`` is what ``synergypl init`` wrote before prediction became
        orientation-independent; a project always trains in a fixed voxel order, so null takes the default.
        """
        d = dict(self.engine)
        d["classes"] = self.class_names()
        pre = d.get("preprocess")
        if isinstance(pre, dict) and "orientation" in pre and pre["orientation"] is None:
            d["preprocess"] = {k: v for k, v in pre.items() if k != "orientation"}
        return EngineConfig.from_dict(d)

    def database_url(self, root: Path) -> str:
        """``SYNERGYPL_DATABASE_URL`` (keeps a password out of project.yaml), else ``service.database_url``,
        else the SQLite file in the project folder."""
        return (os.environ.get(DATABASE_URL_ENV) or self.service.database_url
                or f"sqlite:///{(root / 'synergypl.sqlite').resolve()}")

    # ---- files ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path) -> ProjectConfig:
        """Read the project's configuration; ValueError says which file and what is wrong."""
        path = check_project_folder(root)
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        try:
            cfg = cls.model_validate(data or {})
            cfg.engine_config()  # unknown engine options are an error now, not at training time
        except ValidationError as exc:
            parts = [f"{'.'.join(str(x) for x in e['loc']) or 'file'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors()]
            raise ValueError(f"{path}: " + "; ".join(parts)) from None
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return cfg

    def save(self, root: Path) -> Path:
        """Write ``project.yaml`` atomically."""
        data = self.model_dump(mode="json", exclude_none=True)
        text = "# SynergyPL project; edit class names, colours, terminology and engine options here.\n"
        text += yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
        path = Path(root) / "project.yaml"
        atomic_write_bytes(path, text.encode())
        return path


def engine_dict_without_classes(cfg: EngineConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d.pop("classes", None)
    return d
