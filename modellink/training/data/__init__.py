"""What the train loop reads: Megatron indexed datasets (pretraining and packed instruction
data), the sampler that resumes mid-epoch, and the collator that pads instruction batches."""
