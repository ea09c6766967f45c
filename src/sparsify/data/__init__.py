"""Training data: image folders, named datasets, synthetic data for tests and examples."""
