"""Evaluation (official metrics, retrieval ranking, server files), prediction and pictures."""
