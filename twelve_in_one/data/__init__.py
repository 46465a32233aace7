"""Data layer of twelve_in_one: readers of the official 12-in-1 release formats.

Everything under this package is plain Python and numpy. It never imports jax
or the model code, so the readers can run in data-loading worker processes and
in tools that have no accelerator.
"""
