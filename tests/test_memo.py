"""capl.memo: evaluation and BatchNorm recalibration reused only for identical inputs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import capl.memo as memo_mod
from capl.evaluation import evaluate_subset
from capl.memo import Memo, evaluate_once, recalibrate_once
from capl.pruning import recalibrate_batchnorm

NAMES = ["a", "b", "c"]


def network(stride: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=stride),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def batches(seed: int = 1, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 6, 6, generator=generator) * 2 + 1, torch.randint(0, 3, (8,)))
        for _ in range(count)
    ]


class Counted:
    """Batches that count how many the consumer fetched."""

    def __init__(self, items: list[Any]) -> None:
        self.items, self.fetched = items, 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.fetched += 1
            yield item


def forwards(net: nn.Module) -> list[int]:
    """Count the network's forward passes (not by a hook: hooks are part of the memo's key)."""
    calls: list[int] = []
    forward = net.forward
    net.forward = lambda *a: calls.append(1) or forward(*a)  # type: ignore[method-assign]
    return calls


def test_evaluation_is_reused_only_for_identical_network_data_and_rows() -> None:
    memo, data = Memo(), batches()
    first = evaluate_once(network(), data, [0, 1, 2], NAMES, memo)
    assert first == evaluate_subset(network(), data, [0, 1, 2], NAMES)

    same = network()
    calls = forwards(same)
    assert evaluate_once(same, copy.deepcopy(data), [0, 1, 2], NAMES, memo) == first
    assert calls == [] and memo.hits == 1  # equal weights, equal batches: not run again

    changed = copy.deepcopy(data)
    changed[2][0][0, 0, 0, 0] += 1.0  # one pixel of one batch
    calls = forwards(same)
    evaluate_once(same, changed, [0, 1, 2], NAMES, memo)
    assert len(calls) == 4  # another input: evaluated
    evaluate_once(same, data, [2, 1, 0], NAMES, memo)
    assert len(calls) == 8  # other logit rows: evaluated
    nudged = network()
    with torch.no_grad():
        nudged[0].weight.view(-1)[0] += 1e-4
    calls = forwards(nudged)
    # counted: a nudge this small may leave every figure equal, so equal results prove nothing
    assert evaluate_once(nudged, data, [0, 1, 2], NAMES, memo) == evaluate_subset(
        nudged, data, [0, 1, 2], NAMES
    )
    assert len(calls) == 8 and memo.hits == 1  # evaluated by evaluate_once, then directly
    # the same state dict in a network of other settings (stride 2) is another network
    strided = network(stride=2)
    assert strided.state_dict().keys() == same.state_dict().keys()
    calls = forwards(strided)
    evaluate_once(strided, data, [0, 1, 2], NAMES, memo)
    assert len(calls) == 4 and memo.hits == 1
    hooked = network()  # a hook may change what the network computes: another network
    hooked[2].register_forward_hook(lambda module, args, out: out * 0)
    calls = forwards(hooked)
    evaluate_once(hooked, data, [0, 1, 2], NAMES, memo)
    assert len(calls) == 4 and memo.hits == 1


def test_recalibration_is_reused_with_the_same_statistics_and_fetches() -> None:
    memo, data = Memo(), batches(count=5)
    expected = network()
    reference = Counted(data)
    assert recalibrate_batchnorm(expected, reference, 3) == 3

    first, again = network(), network()
    fetched = Counted(data)
    assert recalibrate_once(first, fetched, 3, memo) == 3
    assert fetched.fetched == reference.fetched == 4  # the loaders advance as before
    calls = forwards(again)
    repeat = Counted(data)
    assert recalibrate_once(again, repeat, 3, memo) == 3
    assert calls == [] and memo.hits == 1 and repeat.fetched == 4
    for net in (first, again):
        for key, value in expected.state_dict().items():
            assert torch.equal(net.state_dict()[key], value), key

    other = network()
    calls = forwards(other)
    recalibrate_once(other, batches(seed=2, count=5), 3, memo)  # other batches: run
    assert len(calls) == 3 and memo.hits == 1
    assert not torch.equal(other[1].running_mean, expected[1].running_mean)
    assert recalibrate_once(network(), data, 0, memo) == 0


def test_batches_beyond_the_memory_cap_stream_without_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memo_mod, "MAX_BATCH_BYTES", 1000)  # less than two batches
    memo, data = Memo(), batches()
    fetched = Counted(data)
    result = evaluate_once(network(), fetched, [0, 1, 2], NAMES, memo)
    assert result == evaluate_subset(network(), data, [0, 1, 2], NAMES)
    assert fetched.fetched == 4 and result["test_samples"] == 32  # every batch, once
    net = network()
    calls = forwards(net)
    evaluate_once(net, data, [0, 1, 2], NAMES, memo)
    assert len(calls) == 4 and memo.hits == 0  # nothing kept: evaluated again


def test_memo_keeps_the_newest_results_and_hands_out_copies() -> None:
    memo = Memo(size=2)
    memo.put(("a",), {"x": [1]})
    memo.put(("b",), {"x": [2]})
    got = memo.get(("a",))
    assert got == {"x": [1]}
    got["x"].append(5)  # a caller's change does not reach the memo
    assert memo.get(("a",)) == {"x": [1]}
    memo.put(("c",), {"x": [3]})  # "b" is now the least recently used
    assert memo.get(("b",)) is None and memo.get(("c",)) == {"x": [3]}
    with pytest.raises(ValueError, match="size"):
        Memo(size=0)
