"""session-broker's proxy: an aiohttp reverse proxy that leases a session per upstream attempt."""
