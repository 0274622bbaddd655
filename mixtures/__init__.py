"""Mixture compiler: temperature schedules and token counts to phase manifests."""
