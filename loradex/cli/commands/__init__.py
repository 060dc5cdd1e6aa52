"""One module per group of CLI commands; each imports nothing heavy at top level."""
