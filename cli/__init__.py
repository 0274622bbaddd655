"""Command-line entry points: `mmbert-data` (data pipeline, mixtures) and `mmbert-train`."""
