"""The labeling logic's workflows, one per file; :mod:`..logic` puts them together."""
