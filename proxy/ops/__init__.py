"""What operators use: the ops endpoints and admin API, metrics, logs, alert notices, and the
operator commands (``status``, ``sessions``, ``export``, ``import``)."""
