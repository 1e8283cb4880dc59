"""Thin Faust wiring: topics, tables and agents around the pure core in `detectors/`."""
