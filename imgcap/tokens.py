"""The special tokens and their ids, shared by the data (``imgcap.data``), the networks
(``imgcap.decoders``) and the training objectives (``imgcap.objectives``).

Ids 0..3 are ``<pad> <start> <end> <unk>`` in that order, so padding is 0 and an encoded
caption reads ``[<start>, w1, ..., wn, <end>, <pad>, ...]``. Neither ``models`` nor
``objectives`` imports ``data``: this small module is the one thing they share.
"""

from __future__ import annotations

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
