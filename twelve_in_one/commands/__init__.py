"""Subcommands of the `twelve-in-one` console script, one module each."""
