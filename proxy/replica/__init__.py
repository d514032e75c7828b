"""A replica's lifecycle: its pools and their leases, releases, live reloads, the fleet watch,
and serving both applications until a graceful stop."""
