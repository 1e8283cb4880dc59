"""Replay recorded LLM traffic through spendwatch, as wire-contract events."""
