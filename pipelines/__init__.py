"""Ray Data / Train / Tune and MLflow orchestration around :mod:`aim_core`, and the CLI."""
