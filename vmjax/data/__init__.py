"""YouTube-8M records, the embedded synthetic dataset and grain input pipelines."""
