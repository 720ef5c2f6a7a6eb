"""Model-running compute: gradients at checkpoints and during training (activation patching joins later)."""
