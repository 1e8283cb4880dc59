"""`spendwatch bench`: throughput, latency and memory of the real worker on the embedded broker."""
