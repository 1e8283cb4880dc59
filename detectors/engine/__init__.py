"""The engine: events in, alerts out, in event time. Per-workflow state, spend windows, periods,
budgets, team roll-ups."""
