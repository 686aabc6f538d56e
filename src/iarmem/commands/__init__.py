"""CLI sub-commands: argument parsing and wiring only; the work lives in the stage packages."""
