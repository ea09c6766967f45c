"""Regenerate reviews.csv: 400 short movie-review sentences from templates, balanced
positive/negative (python examples/sentiment/make_reviews.py)."""

from pathlib import Path

from sparsify.data.synthetic_text import sentiment_rows, write_csv

if __name__ == "__main__":
    write_csv(Path(__file__).with_name("reviews.csv"), sentiment_rows(400, seed=2026))
