"""What a person reviews: MLflow runs per study and trial, Pareto pictures, the UI command."""
