"""Curation: VGGSound / VEGAS clip lists -> WebDataset shards of highly correlated audio-visual pairs.

A run (`pipeline`, the only module that knows Dask) maps `clip_task` over groups of clips: `fetch/` brings
each source into `raw/`, `decode` reads frames and audio, `quality` measures the data-quality signals,
`localise/` scores every frame, `select` picks the moments, and `results` stores one cache file per clip
(`scoring_workers` does the same work as prepare / score-on-a-GPU-worker / finish tasks). Then `outputs/`
selects clips across the run and writes shards and manifests. `storage` is the only module that knows fsspec
(OUT may be a local folder or a bucket; `staging` gives a task local copies of a clip's files); `config`,
`errors` and `provenance` serve every stage; `demo` builds the synthetic world.
"""
