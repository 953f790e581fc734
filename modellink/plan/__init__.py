"""Memory and parallelism planner: what a run will hold per rank, before it is launched."""
from modellink.plan.memory import MemoryPlan, StagePlan, estimate

__all__ = ["MemoryPlan", "StagePlan", "estimate"]
