"""Training: `pretrain()` and the loop at this level; each concern around them in its own
subpackage (data, checkpoint, ha for high availability, monitoring)."""
