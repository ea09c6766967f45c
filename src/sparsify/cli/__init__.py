"""Command-line interface (click). Imports nothing heavy: ``--help`` and ``--dry-run`` stay fast."""
