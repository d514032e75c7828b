"""A replica's configuration: the settings (the one reader of the environment) and the pools it
serves, declared once and read by every wing; and the generator of the configuration reference."""
