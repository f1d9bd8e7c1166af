"""Vectors in and out of catalogs: the Parquet vectors layout, catalog import/export, and
embedding folders on a Ray cluster. Built on `catalog` and `embedder`."""
