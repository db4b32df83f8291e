"""The feature table: extracting every clip's vectors and frames through a per-clip cache
(``extract``), and storing, loading and selecting its rows (``store``)."""
