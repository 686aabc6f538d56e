"""LlamaGen: the VQ-16 tokenizer and the class-conditional Llama GPT, with official state-dict keys."""

from iarmem.models.llamagen.family import PRESETS, LlamaGenFamily
from iarmem.models.llamagen.tokenizer import VQArgs, VQModel
from iarmem.models.llamagen.transformer import GPTArgs, KVCache, Transformer

__all__ = ["PRESETS", "GPTArgs", "KVCache", "LlamaGenFamily", "Transformer", "VQArgs", "VQModel"]
