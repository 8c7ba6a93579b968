"""Feature and check hooks of the Capital Bikeshare example."""
