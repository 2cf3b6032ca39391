"""The SynergyPL panel's code that does not need Qt (testable on slicer-core without the application).

- :mod:`.scene`: scene helpers, one module per concern (volumes, files, label map <-> segmentation, heatmap layer,
  centring, which nodes belong to a volume, export).
- :mod:`.grids`: moving arrays between the server's and Slicer's voxel grids, exactly.
- :mod:`.logic`: the labeling loop, driving the service's client and the scene.
- :mod:`.messages`: server summary, training progress and error sentences shown in the panel.
- :mod:`.background`: background work with results delivered on the GUI thread.
- :mod:`.signals`: a plain-Python signal for logic -> widget reporting.
- :mod:`.local_server`: the command line of a local server (the service's own is SynergyPLLib/service/server.py).
"""
