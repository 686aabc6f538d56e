"""Ground truth for localizers: unit-level injection (INJ)."""
