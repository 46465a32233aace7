"""twelve_in_one: 12-in-1 multi-task vision-and-language learning (ViLBERT) in JAX/Flax."""

__version__ = "0.1.0"
