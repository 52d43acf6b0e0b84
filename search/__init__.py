"""Who decides what to train next: studies on Optuna storage, workers, pruning, export, CLI."""
