"""Training checkpoints: Megatron-LM's folder layout written atomically, read back with the
layout and trust checks, distributed-optimizer shards, and which iterations are kept."""
