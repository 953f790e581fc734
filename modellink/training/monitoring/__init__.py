"""What a run reports about itself: Megatron-LM's log line and its figures, the optional
monitor package, and the profiler."""
