"""The SynergyPL engine (torch + MONAI; no servers, no Slicer).

Modules, one job each:
- ``io``: volumes with geometry (NIfTI, NRRD, DICOM series) and input validation.
- ``config``: the engine configuration that travels with each checkpoint.
- ``data``: Decathlon folders, preprocessing (MONAI transforms) and patch sampling.
- ``planning``: dataset fingerprint and plan (working spacing, patch, batch, iterations from a time budget).
- ``model``: the MONAI network, feature hook and checkpoints.
- ``synergy``: synergy evaluation (consistent/confident regions, the C-class bar, copy-paste/mixup) and the regional losses.
- ``augment``: label-preserving augmentation of training patches (MONAI affine, intensity).
- ``soft_labels``: class prototypes, similarity smoothing, rare-class boost (soft pseudo labels).
- ``calibration``: temperature scaling and (class-wise) ECE.
- ``trainer``: supervised / Mean Teacher / SGRS / SynergyPL training with EMA teacher.
- ``inference``: sliding-window prediction, confidence heatmap, region map, flagged regions.
- ``metrics`` / ``uncertainty``: Dice, HD95, ASD, ECE; error-detection baselines.
- ``outputs`` / ``overlay``: what ``synergypl infer`` writes next to each input, and its PNG overlay.
- ``sliding_window``: the sliding-window predictor shared by training and inference.

Imports ``SynergyPLLib.common`` only (never the service, the client or the harnesses); the benchmark
and the latency measurement live with the harnesses, beside the demo.
"""
