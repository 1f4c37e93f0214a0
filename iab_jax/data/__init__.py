"""Data spine: records, degradations, transforms and the grain input pipeline."""
