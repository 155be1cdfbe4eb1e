"""The CIDEr-D reward on its own: token ids in, CIDEr-D against raw references out."""

from __future__ import annotations

import doctest

import torch

import imgcap.objectives.reward as reward_module
from imgcap.metrics.cider_d import CiderD
from imgcap.objectives.reward import CiderDReward
from imgcap.tokens import END_ID, PAD_ID, START_ID
from imgcap.vocab import normalize_caption

WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "blue", "circle", "square", "big"]
CORPUS = [
    ["A red circle.", "a big red circle"],
    ["A blue square!", "a big blue square"],
    ["a red square"],
    ["a blue circle"],
]


def test_the_docstring_example_holds():
    result = doctest.testmod(reward_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


def test_reward_is_cider_d_of_the_words_against_normalised_references():
    reward = CiderDReward(WORDS, CORPUS)
    rows = torch.tensor(
        [
            [4, 5, 7, END_ID, PAD_ID],  # a red circle
            [START_ID, 4, 9, 6, 8],  # a big blue square (no <end>: the whole row)
            [END_ID, 5, 5, 5, 5],  # empty caption
        ]
    )
    references = [CORPUS[0], CORPUS[1], CORPUS[0]]
    got = reward(rows, references)

    normalised_corpus = [[" ".join(normalize_caption(c)) for c in refs] for refs in CORPUS]
    cider = CiderD(normalised_corpus)
    expected = cider.scores(
        ["a red circle", "a big blue square", ""],
        [normalised_corpus[0], normalised_corpus[1], normalised_corpus[0]],
    )
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.allclose(got, torch.as_tensor(expected, dtype=torch.float32))
    assert got[0] > 1.0 and got[1] > 1.0 and got[2] == 0
    # lists of ids work as tensors do, and the references of an image are normalised once
    assert torch.equal(reward(rows.tolist(), references), got)
    assert len(reward._normalized) == len(CORPUS)


def test_words_stop_at_end_and_skip_specials():
    reward = CiderDReward(WORDS, CORPUS)
    assert reward.words([START_ID, 4, 5, PAD_ID, 7, END_ID, 8]) == "a red circle"
    assert reward.words([]) == ""
