"""The networks: plain ``nn.Module``s and functions that depend on torch/torchvision only."""

from imgcap.models.attention import AdditiveAttention
from imgcap.models.decoder import AttentionLSTMDecoder, DecoderState
from imgcap.models.decoding import DecodeResult, beam_search, decode, greedy_decode
from imgcap.models.encoder import ARCHS, ImageEncoder, build_encoder

__all__ = [
    "ARCHS",
    "AdditiveAttention",
    "AttentionLSTMDecoder",
    "DecodeResult",
    "DecoderState",
    "ImageEncoder",
    "beam_search",
    "build_encoder",
    "decode",
    "greedy_decode",
]
