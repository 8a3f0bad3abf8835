"""Shared by every stage: config, errors, schema, runtime, the label set and store, the CLI."""
