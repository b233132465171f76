"""Localise stage: score every frame's audio-visual correspondence.

`model` (the EZ-VSL-family localiser and its inputs), `checkpoint` (its file), `train` (`ssl-train`: no
labels), `score` (the per-frame scorers), `published` (EZ-VSL / FNAC / SLAVC checkpoints), `moments` (the
official moments file, as a scorer and as an export), `scorers` (the configured scorer, once per process).
"""
