"""Training: state, pure steps, checkpointing and the loop."""
