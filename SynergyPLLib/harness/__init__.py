"""Harnesses around the library, not part of it: benchmark, latency, demo, simulated annotator, figures.

They import engine, service, client and common; only :mod:`SynergyPLLib.cli` imports them.
"""
