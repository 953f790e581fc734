"""Post-training stages run by `trainer.py --stage ...`: the stage's flags, its batches and its
forward step, plugged into the pretraining loop (Megatron-LM's `forward_step_func`)."""
