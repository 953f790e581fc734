"""DeepSeek-V2's device-level and communication balance losses (`--moe-device-level-aux-loss-coeff`,
`--moe-comm-aux-loss-coeff`), added to megatron-core's router.

megatron-core balances experts (aux_loss / seq_aux_loss); DeepSeek-V2 also balances the
devices: its experts are split into D groups, one per expert-parallel rank, and with f_j the
fraction of routes to expert j (1 when even), P_j the mean router score of expert j,

- device level: coeff x sum over devices i of mean_{j in i}(f_j) x sum_{j in i}(P_j),
- communication: coeff x sum over devices i of D / (M T) x (tokens sent to i) x sum_{j in i}(P_j),
  M being the devices a token may be sent to (--topk-group where the expert groups are the
  expert-parallel ranks, else min(top-k, D)).

The router (megatron-core's TopKRouter with DeepSeek-V2's group ranking, group_routing.py,
given to MoELayer through its spec) attaches both to the routing weights as megatron-core
attaches its own losses, so they reach the gradients and its loss tracker alike.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from megatron.core.transformer.moe.moe_utils import get_tokens_per_expert_and_token_count

from modellink.models.group_routing import GroupLimitedRouter


class DeviceBalancedRouter(GroupLimitedRouter):
    def __init__(self, *args: Any, devices: int, devices_per_token: int, device_coeff: float,
                 comm_coeff: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.devices, self.devices_per_token = devices, devices_per_token
        self.device_coeff, self.comm_coeff = device_coeff, comm_coeff

    def routing(self, logits: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        probs, routing_map = super().routing(logits, padding_mask)
        if not (self.training and torch.is_grad_enabled()):
            return probs, routing_map
        experts = self.config.num_moe_experts
        scores = torch.softmax(logits.reshape(-1, experts).float(), dim=-1)
        routes, local_tokens, tokens = get_tokens_per_expert_and_token_count(
            routing_map, self.tp_cp_group, self.topk)
        # Per device: the summed mean scores of its experts, and its experts' mean route share.
        device_scores = (scores.sum(dim=0) / tokens).view(self.devices, -1).sum(dim=-1)
        route_share = routes.float() * experts / (self.topk * tokens)
        losses = (
            ("device_level_balance_loss", self.device_coeff,
             lambda: (route_share.view(self.devices, -1).mean(dim=-1) * device_scores).sum()),
            ("communication_balance_loss", self.comm_coeff,
             lambda: (self._tokens_per_device(routing_map) * self.devices
                      / (self.devices_per_token * tokens) * device_scores).sum()),
        )
        for name, coeff, loss in losses:
            if coeff > 0:
                probs = self.attach_and_log_load_balancing_loss(
                    probs, coeff, coeff * loss(), name, self.tp_cp_group,
                    valid_token_count=local_tokens)
        return probs, routing_map

    def _tokens_per_device(self, routing_map: torch.Tensor) -> torch.Tensor:
        """Tokens (of every tensor/context-parallel rank) sending at least one route to each
        device."""
        sent = routing_map.view(routing_map.shape[0], self.devices, -1).any(dim=-1)
        local = sent.sum(dim=0).float()
        group = self.tp_cp_group
        if group.size() > 1:
            torch.distributed.all_reduce(local, group=group)
        return local
