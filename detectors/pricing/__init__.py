"""Money as integer micro-USD, and the price of each usage event from the genai-prices catalog."""
