"""Benchmarks: fashionrec-onnx side by side with the classic Keras + sklearn pipeline.

Run ``make bench`` (quick, under 10 minutes on 2 cores) or ``python -m benchmarks --full``.
Every figure is measured in one run, so ratios hold on a noisy machine.
"""
