"""SynergyPL: interactive semi-supervised labeling of 3D medical images.

Three floors, data flowing one way:
- ``SynergyPLLib.engine``: torch + MONAI; training, inference, heatmaps, metrics, benchmark.
- ``SynergyPLLib.service``: FastAPI service, datastore and job runner built on the engine.
- ``SynergyPLLib.client``: a standard-library HTTP client for the service (used by the Slicer module
  and the CLI); importing it never imports torch.
- ``SynergyPLLib.common``: small shared definitions (standard library + numpy), e.g. the job states.
"""

__version__ = "0.1.0"
