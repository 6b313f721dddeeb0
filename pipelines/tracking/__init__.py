"""MLflow: runs, metrics and plots, and the Model Registry."""
