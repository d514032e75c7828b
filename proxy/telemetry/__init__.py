"""What a replica tells about itself: Prometheus metrics, structured logs (with secrets
redacted), and alert notices to a webhook. The request path and the replica's lifecycle report
here; the operator surfaces (proxy.ops) serve it."""
