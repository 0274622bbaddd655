"""Compact ModernBERT trainer: model, attention backends, data loading, checkpoints, export."""
