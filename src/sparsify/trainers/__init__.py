"""Domain trainers: thin adapters that map a framework's loop onto the lifecycle's events.

Which trainer serves a use case is in :mod:`sparsify.families`."""
