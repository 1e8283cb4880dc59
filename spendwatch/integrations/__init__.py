"""Integrations that feed spendwatch from where LLM calls already are, with configuration only:
`spendwatch.integrations.litellm` (a LiteLLM callback for the SDK and the proxy, extra `litellm`) and
`spendwatch.integrations.otel` (an OpenTelemetry span exporter and the Collector bridge, extra `otel`).
Each imports its third-party package, so import the submodule you use."""
