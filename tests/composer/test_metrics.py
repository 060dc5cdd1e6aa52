"""The metric functions alone, on plain answers and targets."""

from __future__ import annotations

from composer.metrics import accuracy, answer_matches, label_distribution, majority


def test_answer_matches_after_normalising_and_counts_nothing_as_wrong():
    assert answer_matches("  Walked. ", "walked")
    assert not answer_matches(None, "walked")
    assert not answer_matches("walks", "walked")


def test_accuracy_is_the_share_of_hits_and_zero_for_none():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) == 0.0


def test_label_distribution_is_commonest_first():
    assert list(label_distribution(["no", "yes", "yes", "maybe", "yes", "no"]).items()) == [
        ("yes", 3), ("no", 2), ("maybe", 1)
    ]


def test_majority_is_the_commonest_target_and_its_share():
    assert majority(["yes", "no", "yes", "yes"]) == ("yes", 0.75)
    assert majority([]) == (None, 0.0)
