"""Stage recipes: one module per training stage, each with `run(cfg)` and `main(argv)`."""
