"""Evaluation metrics: generic image metrics and dataset-specific domain evaluators."""
