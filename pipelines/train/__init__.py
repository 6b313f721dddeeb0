"""Ray Train: the driver that builds a run from one config, and the loop each worker runs."""
