"""Size limits every input path enforces (Tansu does not enforce record size)."""

MAX_RECORD_BYTES = 1_000_000
"""A record (one event or a JSON array of them) larger than this is dead-lettered."""
MAX_EVENTS_PER_RECORD = 10_000
MAX_ID_LEN = 256
MAX_NAME_LEN = 128
MAX_LABELS = 32
MAX_TOKENS = 100_000_000
"""No single LLM call bills 100M tokens; a larger count is a bug upstream."""
MAX_COST_USD = 100_000.0
TS_MIN = 946_684_800.0  # 2000-01-01
TS_MAX = 4_102_444_800.0  # 2100-01-01
