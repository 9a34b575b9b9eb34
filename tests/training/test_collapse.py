import numpy as np

from cxr.training.collapse import collapse_reason, collapse_tags


def test_collapse_reason_says_one_class_or_no_better_than_the_largest_class():
    names = ["covid", "normal", "viral_pneumonia"]
    true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    assert collapse_reason(true, np.zeros(8, int), names) == (
        "it answers covid for all 8 validation images"
    )
    # two classes answered, but half right: no better than always answering covid (4 of 8)
    assert collapse_reason(true, np.array([0, 0, 1, 1, 0, 0, 1, 1]), names) == (
        "its validation accuracy 0.250 is no better than always answering covid (0.500)"
    )
    assert collapse_reason(true, true, names) is None
    # one class in the validation split: nothing can be told
    assert collapse_reason(np.zeros(4, int), np.zeros(4, int), names) is None


def test_collapse_tags_are_strings_for_mlflow():
    assert collapse_tags(None) == {"collapsed": "false", "collapse_reason": ""}
    assert collapse_tags("it answers covid") == {
        "collapsed": "true",
        "collapse_reason": "it answers covid",
    }
