"""Measuring and improving what search finds: metrics, evaluation, refinement from labels."""
