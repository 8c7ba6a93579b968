"""Feature and check hooks of the next-hour weather example (multiclass classification, text labels)."""
