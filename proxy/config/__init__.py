"""A replica's configuration: the settings' declarations (settings.py), described in words
(fields.py) for the flags (flags.py) and the generated reference (reference.py), read from flags,
the environment and a configuration file by the one reader of the environment (loading.py) and
checked (checks.py); and the pools it serves (pools.py)."""
