"""Models: the stage-1 image encoders, the stage-3 audio encoder and their shared blocks."""
