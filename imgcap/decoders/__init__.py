"""Caption decoders: the contract every decoder implements, the built-in decoders (one module
each, named as in ``conf/model/decoder/``), and the decoding that works on any of them (greedy,
batched beam search, sampling). Plain ``nn.Module``s and functions: torch only.

Importing this package registers the built-in decoders (see :mod:`imgcap.decoders.registry`).
"""

from imgcap.decoders.attention import AdditiveAttention
from imgcap.decoders.contract import CaptionDecoder, DecoderState
from imgcap.decoders.decoding import (
    DecodeResult,
    SampleResult,
    beam_search,
    decode,
    greedy_decode,
    sample_captions,
)
from imgcap.decoders.lstm_attention import AttentionLSTMDecoder, LSTMAttentionSettings, LSTMState
from imgcap.decoders.registry import DECODERS, build_decoder, register_decoder
from imgcap.decoders.transformer import (
    TransformerDecoder,
    TransformerSettings,
    TransformerState,
)

__all__ = [
    "DECODERS",
    "AdditiveAttention",
    "AttentionLSTMDecoder",
    "CaptionDecoder",
    "DecodeResult",
    "DecoderState",
    "LSTMAttentionSettings",
    "LSTMState",
    "SampleResult",
    "TransformerDecoder",
    "TransformerSettings",
    "TransformerState",
    "beam_search",
    "build_decoder",
    "decode",
    "greedy_decode",
    "register_decoder",
    "sample_captions",
]
