"""Data quality: the Great Expectations contract (expectations/*.json) run on frames."""
