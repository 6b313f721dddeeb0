"""Trained models on videos: multi-view evaluation, prediction, attention pictures, class comparisons."""
