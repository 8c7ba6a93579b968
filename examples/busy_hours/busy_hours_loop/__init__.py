"""Feature and check hooks of the busy-hours example (binary classification, boolean label)."""
