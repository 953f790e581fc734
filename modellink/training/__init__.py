"""Initialisation, the train loop, checkpointing and logging."""
