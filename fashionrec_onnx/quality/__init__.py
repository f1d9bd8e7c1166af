"""Measuring and improving search quality: retrieval metrics, `fashionrec evaluate` and its report,
the labelled datasets they run on, and `refine` (a projection learned from the shop's labels)."""
