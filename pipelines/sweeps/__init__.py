"""Ray Tune: the paper's ablations and search spaces as trials of the training pipeline, and their report."""
