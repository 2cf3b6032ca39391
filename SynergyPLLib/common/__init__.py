"""Shared by the engine, the service, the client and the Slicer module: stdlib + numpy only, Python 3.9+."""
