"""A searchable catalog of product images: a directory holding a SQLite database, a vector file
and an HNSW graph.

The database and the vector file are the truth; the graph is a cache of them, saved at
checkpoints and on close, and brought up to date from the database's change log whenever it lags
(after a crash, or after another process wrote). A crash never loses committed work and never
needs re-embedding.

Modules, one job each: `facade` (the public `Catalog`: creating, opening, the jobs), `reading` and
`writing` (its reads and searches, its writes and reshaping), `core` (the open catalog's parts,
locks and catch-up), `database` (the SQLite file: schema, connections, transactions, errors),
`store` (items, settings and the change log in it), `store_fields` (metadata fields in SQL),
`vectors` (the vector file), `graph` (the HNSW graph file), `hnsw` (the hnswlib wrapper), `pca`
(the reduced graph's projection), `columns` (live items and metadata filters as masks), `search`
(query planning), `oracle` (exact search in blocks), `answering` (a search answered once for both
backends), `local_search` (a local catalog's side of it: snapshot, masks, hits), `products`
(grouping photos by product), `duplicates` (near-duplicate groups through the graph), `removals`
(removals that stick), `maintenance` (check, verify, PCA), `opening` (creating, opening,
upgrading), `portable` (a model moved with its catalog), `migrate` (0.1.0 catalogs), `jobs` (where
`feeds`, `interchange` and `quality` plug in folder indexing, feed sync, vectors import/export and
refinement), `reports` (what those jobs return). Catalogs on a Milvus server: `remote` (creating
and opening them), `remote_catalog` and `remote_search` (the `RemoteCatalog`), over `backend` and
`milvus_backend`.

Nothing here imports the packages built on the catalog (`feeds`, `interchange`, `quality`, `cli`,
`service`), not even for type checking (tests/test_layout.py checks).
"""

from . import remote as remote  # registers milvus:// catalogs with the facade (no pymilvus import)
from .answering import Hit, KeyQuery
from .columns import Filter
from .duplicates import DuplicateGroup, DuplicateReport
from .facade import Catalog
from .maintenance import CheckReport
from .store import Item, NewItem

__all__ = [
    "Catalog",
    "CheckReport",
    "DuplicateGroup",
    "DuplicateReport",
    "Filter",
    "Hit",
    "KeyQuery",
    "Item",
    "NewItem",
]
