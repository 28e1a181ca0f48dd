"""Helpers of train.py: configuration (config.py), batching (data.py), validation (evaluate.py)."""
