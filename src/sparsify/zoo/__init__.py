"""Model sources: ``zoo:`` stubs, the model catalog and the local resolver."""
