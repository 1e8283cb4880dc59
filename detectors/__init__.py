"""The pure core: pricing, aggregation, detectors and policy. No Kafka, no wall clock."""
