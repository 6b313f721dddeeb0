"""aim_core: AIM (ICLR 2023) video models over frozen image ViTs, in plain PyTorch.

Importable without Ray or MLflow: the model, video decoding and sampling, transforms and metrics.
"""
