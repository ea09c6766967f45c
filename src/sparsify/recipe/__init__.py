"""SparseML-format recipes: parsing, variables, restricted ``eval``, validation (no torch)."""
