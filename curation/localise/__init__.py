"""Localise stage: score every frame's audio-visual correspondence.

`model` (the EZ-VSL-family localiser and its inputs), `checkpoint` (its file), `train` (`ssl-train`: no
labels), `score` (the per-frame scorers; `clip_scores` is what they return for a clip), `device` (a model scorer
on CPU or CUDA, fp32 or bf16, batches across clips), `published` (EZ-VSL / FNAC / SLAVC checkpoints), `moments`
(the official moments file, as a scorer and as an export), `registry` (every kind of scorer, one line each),
`scorers` (a kind's preparation at a run's start and the configured scorer, once per process), `ssl_scorer` (the
ssl kind: a given or trained model).
"""
