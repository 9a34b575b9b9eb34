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


def test_an_accuracy_above_the_largest_class_by_chance_alone_is_collapsed():
    names = ["covid", "normal", "viral_pneumonia"]
    # ResNet50 with AdamW on the phantoms' val split (18 covid, 30 normal, 14 viral): it
    # answered covid for 47 and got 31 right; always answering normal gets 30
    true = np.array([0] * 18 + [1] * 30 + [2] * 14)
    guessed = np.zeros(62, int)
    guessed[18:31] = 1
    assert collapse_reason(true, guessed, names) == (
        "its validation accuracy 0.500 (31 of 62) is not significantly above always answering "
        "normal (0.484; one-sided binomial p 0.45 >= 0.05)"
    )
    # 39 of 62 (0.629) is evidence of learning: p 0.015
    learned = guessed.copy()
    learned[31:39] = 1
    assert (learned == true).sum() == 39
    assert collapse_reason(true, learned, names) is None


def test_a_split_too_small_to_test_gets_the_plain_comparison():
    names = ["covid", "normal"]
    # 4 images, two classes: even 4 of 4 has p 0.0625, so no test; 3 of 4 beats the share
    true = np.array([0, 0, 1, 1])
    assert collapse_reason(true, np.array([0, 1, 1, 1]), names) is None
    assert collapse_reason(true, np.array([0, 1, 0, 1]), names) == (
        "its validation accuracy 0.500 is no better than always answering covid (0.500)"
    )


def test_collapse_tags_are_strings_for_mlflow():
    assert collapse_tags(None) == {"collapsed": "false", "collapse_reason": ""}
    assert collapse_tags("it answers covid") == {
        "collapsed": "true",
        "collapse_reason": "it answers covid",
    }
