"""mm_utility_mini's exact-match rule, checked by hand."""

import pytest

from mmtoxicqa.metrics.exact_match import exact_match, process_results


@pytest.mark.parametrize(
    "answer,target,expected",
    [
        ("Paris", "paris", 1.0),
        ("The capital of France is Paris.", "paris", 1.0),
        ("7 + 5 = 12.", "12", 1.0),
        ("Hello, I'm here to help", "hello", 1.0),
        ('The word "blue" is not in lowercase.', "blue", 0.0),
        ("12 + 3 = 45", "15", 0.0),
        ("seven", "7", 0.0),
        ("", "7", 0.0),
    ],
)
def test_exact_match(answer, target, expected):
    assert exact_match(answer, target) == expected


def test_process_results_mean_input():
    assert process_results({"answer": "rome"}, ["Rome."]) == {"exact_match": 1.0}
