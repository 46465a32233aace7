"""Pretraining (the official `train_concap.py` objective): losses on masked batches."""
