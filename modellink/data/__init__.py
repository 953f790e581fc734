"""Tokenizers, preprocessing handlers, prompt templates, datasets and the demo corpus."""
