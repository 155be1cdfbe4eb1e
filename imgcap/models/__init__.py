"""The networks: plain ``nn.Module``s and functions that depend on torch/torchvision only.

Importing this package registers the built-in decoders (see :mod:`imgcap.models.registry`).
"""

from imgcap.models.attention import AdditiveAttention
from imgcap.models.contract import CaptionDecoder, DecoderState
from imgcap.models.decoder import AttentionLSTMDecoder, LSTMState
from imgcap.models.decoding import (
    DecodeResult,
    SampleResult,
    beam_search,
    decode,
    greedy_decode,
    sample_captions,
)
from imgcap.models.encoder import ARCHS, ImageEncoder, build_encoder
from imgcap.models.registry import DECODERS, build_decoder, register_decoder
from imgcap.models.transformer import TransformerDecoder, TransformerState

__all__ = [
    "ARCHS",
    "DECODERS",
    "AdditiveAttention",
    "AttentionLSTMDecoder",
    "CaptionDecoder",
    "DecodeResult",
    "DecoderState",
    "ImageEncoder",
    "LSTMState",
    "SampleResult",
    "TransformerDecoder",
    "TransformerState",
    "beam_search",
    "build_decoder",
    "build_encoder",
    "decode",
    "greedy_decode",
    "register_decoder",
    "sample_captions",
]
