import pytest

from sleepy_tui.stats import bootstrap_diff, mcnemar_exact, paired_change


def test_mcnemar_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)          # 0.03125: significant
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)   # 0.0215
    assert mcnemar_exact(2, 6) == pytest.approx(2 * 37 / 256)    # 0.289: not significant


def test_seed_like_noise_is_not_significant():
    # the seed saw 20/30 and 23/30 on two runs of the same model
    before = {f"k{i}": i < 20 for i in range(30)}
    after = {f"k{i}": i < 23 for i in range(30)}
    ch = paired_change([before], [after])
    assert ch.c == 3 and ch.b == 0 and not ch.significant
    assert ch.verdict().startswith("no significant change")


def test_big_paired_gain_is_significant_and_interval_excludes_zero():
    before = {f"k{i}": i < 10 for i in range(30)}
    after = {f"k{i}": i < 22 for i in range(30)}
    ch = paired_change([before], [after])
    assert ch.significant and "gain" in ch.verdict()
    assert ch.ci_low > 0 and ch.diff == pytest.approx(12 / 30)


def test_bootstrap_with_repeats_uses_frequencies():
    diff, lo, hi = bootstrap_diff({"a": 0.5, "b": 1.0}, {"a": 1.0, "b": 1.0}, samples=500)
    assert diff == pytest.approx(0.25) and lo <= diff <= hi
