"""Command-line tools: model summary and friends."""
