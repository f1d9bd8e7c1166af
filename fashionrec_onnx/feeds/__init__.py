"""Getting products in: scanning image folders, indexing them, reading shop feeds, downloading
images and keeping a catalog in sync with a feed. Built on `catalog`; the catalog never imports it."""
