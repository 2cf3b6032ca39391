"""Shared by engine, service, client and the Slicer module: stdlib + numpy only, Python 3.9+."""
