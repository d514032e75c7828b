"""What operators use: the ops endpoints and admin API, the web console (``console``, its files
in ``ui/``), metrics, logs, alert notices, and the operator commands (``status``, ``sessions``,
``export``, ``import``)."""
