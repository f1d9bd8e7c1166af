"""Measuring search quality: retrieval metrics on plain data, `fashionrec evaluate` and its
report, and the labelled datasets (Fashion-MNIST, the bundled sample) they run on."""
