"""Batches of similar lengths, padded only to their own longest."""

from __future__ import annotations

import random

import torch

from trainers.batching import length_batches, pad_batch


def test_pad_batch_pads_to_the_batch_longest_only():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_length_batches_cover_every_example_once_with_similar_lengths():
    lengths = [random.Random(i).randrange(5, 100) for i in range(1000)]
    batches = length_batches(lengths, 16, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of 16 would spread ~80 tokens
