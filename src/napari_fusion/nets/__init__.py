"""Neural network definitions used by the learned fusion methods (pure torch)."""
