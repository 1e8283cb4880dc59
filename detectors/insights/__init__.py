"""Savings insights: the four levers (right-sizing, caching, context bloat, token waste) per workflow, in dollars.

`engine.py` (the `InsightsEngine` the Monitor feeds), `aggregates.py` (what is kept per workflow ×
model × day, and per run), `levers.py` (the four insights, priced from the catalog), `tiers.py` (the
tier map: frontier model → cheaper model).
"""

from detectors.insights.engine import InsightsEngine
from detectors.insights.levers import KINDS
from detectors.insights.tiers import DEFAULT_TIERS

__all__ = ["DEFAULT_TIERS", "KINDS", "InsightsEngine"]
