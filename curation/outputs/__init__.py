"""What a run leaves behind, built from the per-clip cache files only.

`assemble` (selection across clips, then shards and manifests written by a wave of tasks), `shards`
(WebDataset tars, byte-identical for the same inputs), `export` (the official Sound2Scene layout), `report`
(one HTML page), `evaluate` (truth metrics on the demo world).
"""
