"""RAR: MaskGIT-VQGAN tokens predicted by a randomized-order autoregressive transformer."""

from iarmem.models.rar.family import PRESETS, RARFamily
from iarmem.models.rar.tokenizer import MaskGitVQGAN, VQGANConfig
from iarmem.models.rar.transformer import RARConfig, RARTransformer

__all__ = ["PRESETS", "RARFamily", "MaskGitVQGAN", "VQGANConfig", "RARConfig", "RARTransformer"]
