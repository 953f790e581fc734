"""ModelLink-style LLM training framework on megatron-core."""
