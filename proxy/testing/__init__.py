"""Parts for testing a deployment of session-broker: a simulated upstream that enforces
per-credential limits exactly, used by the project's own tests, benchmarks and ``demo``."""
