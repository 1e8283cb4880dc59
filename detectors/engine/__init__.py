"""The engine: events in, alerts out, in event time — per-workflow state, spend windows, periods, budgets, team roll-ups."""
