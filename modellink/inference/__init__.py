"""Generation (greedy, sampling, beam search) with KV cache, streaming and chat, at any TP/PP
layout of a Megatron checkpoint.

    from modellink.inference import load_model, generate, parse_inference_args
    model = load_model(parse_inference_args([...flags..., "--load", ckpt]))
    print(generate(model, "how are you?", max_new_tokens=32)[0].text)
    model.close()
"""
from modellink.inference.arguments import parse_inference_args
from modellink.inference.generation import (
    Generation,
    GenerationConfig,
    generate,
    stream_generate,
)
from modellink.inference.model import InferenceModel, load_model

__all__ = ["Generation", "GenerationConfig", "InferenceModel", "generate", "load_model",
           "parse_inference_args", "stream_generate"]
