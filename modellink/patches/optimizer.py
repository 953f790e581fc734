"""Patches to megatron-core's distributed optimizer."""
import functools
from typing import Any, Callable, Dict, List

from modellink.patches.registry import Patch


def _keep_unsaved_states(original: Callable) -> Callable:
    # Without apex / Transformer Engine, megatron-core falls back to torch.optim.AdamW, whose
    # per-parameter state also holds "step". The gathered checkpoint stores only param,
    # exp_avg and exp_avg_sq (step travels in the param groups), but the loader copies every
    # key of the live state and fails on "step". Keys absent from the file keep their
    # already-restored value.
    @functools.wraps(original)
    def set_states(self: Any, model_param: Any, tensors: Dict[str, Any]) -> None:
        if not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            live = self.optimizer.state.get(main_param, {})
            tensors = {**{k: v for k, v in live.items() if k not in tensors}, **tensors}
        return original(self, model_param, tensors)

    return set_states


def _unshare_steps(original: Callable) -> Callable:
    # Same fallback: the loader gives every parameter's state one shared "step" tensor, and
    # torch's AdamW increments each parameter's step in place, so after a resume the shared
    # step would advance once per parameter per iteration and skew bias correction.
    @functools.wraps(original)
    def load_state_dict(self: Any, state_dict: Dict[str, Any]) -> None:
        original(self, state_dict)
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] = state["step"].clone()

    return load_state_dict


def optimizer_patches() -> List[Patch]:
    return [
        Patch("megatron.core.optimizer.distrib_optimizer.DistributedOptimizer.load_state_dict",
              _unshare_steps, "a resumed torch AdamW would share one step tensor across params",
              wraps=True, params=("self", "state_dict")),
        Patch("megatron.core.optimizer.distrib_optimizer.DistributedOptimizer."
              "_set_main_param_and_optimizer_states", _keep_unsaved_states,
              "loading distributed-optimizer state with torch's AdamW fails on its 'step' key",
              wraps=True, params=("self", "model_param", "tensors")),
    ]
