"""High availability: dying-gasp checkpoints on faults and signals, the replica optimizer's
in-memory copies, and the conditions that end a run early and cleanly."""
