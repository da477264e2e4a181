"""The restart kept: the one whose labels agree most with the other restarts' labels."""

from __future__ import annotations

import numpy as np
import pytest

from hsi_cluster.model.choose_restart import choose_restart


def test_the_restart_that_merged_two_classes_is_not_kept() -> None:
    truth = np.repeat(np.arange(3), 100)
    renamed = (truth + 1) % 3  # the same partition under other names: full agreement
    merged = np.where(truth == 2, 1, truth)  # two classes in one cluster
    choice = choose_restart([merged, truth, renamed])
    assert choice.chosen == 1  # the first of the two that agree
    assert choice.agreement[1, 2] == pytest.approx(1.0) and choice.agreement[0, 1] < 0.8
    assert choice.mean_agreement[0] < choice.mean_agreement[1] == choice.mean_agreement[2]
    np.testing.assert_allclose(choice.agreement, choice.agreement.T)
    assert choice.to_dict()["chosen"] == 1 and len(choice.to_dict()["agreement"]) == 3


def test_restarts_with_other_k_are_compared() -> None:
    truth = np.repeat(np.arange(4), 50)
    split = np.where((truth == 3) & (np.arange(200) % 2 == 0), 4, truth)  # K = 5: one class split
    assert choose_restart([split, truth, truth]).chosen == 1


@pytest.mark.parametrize(("labels", "message"), [([np.zeros(5, int)], "at least 2 restarts"),
                                                 ([np.zeros(5, int), np.zeros(4, int)], "different pixel counts")])
def test_bad_input(labels: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose_restart(labels)
