"""Small shared definitions (stdlib + numpy only, Python 3.9+) imported by engine, service, client and the Slicer module."""
