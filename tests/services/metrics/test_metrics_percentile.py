"""percentile_from_buckets, merge_buckets and summarize: pure functions, exact values."""

import pytest

from clawmesh.services.metrics.histogram import (
    Histogram,
    LatencyStats,
    merge_buckets,
    percentile_from_buckets,
    summarize,
)

BOUNDS = (10.0, 20.0, 30.0)


@pytest.mark.parametrize(("q", "expected"), [(0.0, 10.0), (0.5, 15.0), (0.9, 19.0), (1.0, 20.0)])
def test_interpolates_linearly_inside_one_bucket(q, expected):
    assert percentile_from_buckets(BOUNDS, [0, 10, 0, 0], q) == pytest.approx(expected)


def test_walks_cumulative_counts_across_buckets():
    counts = [5, 5, 0, 10]
    assert percentile_from_buckets(BOUNDS, counts, 0.25) == pytest.approx(10.0)  # rank 5: top of b0
    assert percentile_from_buckets(BOUNDS, counts, 0.375) == pytest.approx(15.0)  # rank 7.5
    assert percentile_from_buckets(BOUNDS, counts, 0.1) == pytest.approx(4.0)  # rank 2 of (0, 10]


def test_first_bucket_starts_at_zero_without_min():
    assert percentile_from_buckets(BOUNDS, [10, 0, 0, 0], 0.5) == pytest.approx(5.0)


def test_open_top_bucket_answers_its_lower_bound_without_max():
    assert percentile_from_buckets(BOUNDS, [0, 0, 0, 4], 0.5) == 30.0


def test_open_top_bucket_interpolates_up_to_max():
    assert percentile_from_buckets(BOUNDS, [0, 0, 0, 4], 0.5, hi=50.0) == pytest.approx(40.0)


def test_bucket_range_is_narrowed_to_observed_min_and_max():
    counts = [0, 10, 0, 0]
    assert percentile_from_buckets(BOUNDS, counts, 0.0, lo=12.0, hi=18.0) == pytest.approx(12.0)
    assert percentile_from_buckets(BOUNDS, counts, 0.5, lo=12.0, hi=18.0) == pytest.approx(15.0)
    assert percentile_from_buckets(BOUNDS, counts, 1.0, lo=12.0, hi=18.0) == pytest.approx(18.0)
    # min only narrows the bucket it falls in; max only the one it falls in.
    assert percentile_from_buckets(BOUNDS, [5, 5, 0, 0], 0.75, lo=2.0, hi=14.0) == pytest.approx(12.0)


def test_result_never_leaves_min_max_even_with_inconsistent_data():
    # A max below its bucket's lower bound (a misbehaving exporter): stay within [lo, hi].
    assert percentile_from_buckets(BOUNDS, [0, 0, 4, 0], 0.5, hi=15.0) == 15.0
    assert percentile_from_buckets(BOUNDS, [0, 4, 0, 0], 0.5, lo=25.0) == 25.0


def test_empty_histogram_is_zero():
    assert percentile_from_buckets(BOUNDS, [0, 0, 0, 0], 0.99) == 0.0
    assert percentile_from_buckets((), [0], 0.5) == 0.0


def test_no_bounds_single_bucket_uses_min_max():
    assert percentile_from_buckets((), [4], 0.5, lo=2.0, hi=6.0) == pytest.approx(4.0)


def test_float_counts_from_rebinning_are_accepted():
    assert percentile_from_buckets(BOUNDS, [0, 2.5, 2.5, 0], 0.5) == pytest.approx(20.0)


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_rejects_quantiles_outside_unit_interval(q):
    with pytest.raises(ValueError, match="quantile"):
        percentile_from_buckets(BOUNDS, [1, 0, 0, 0], q)


def test_rejects_mismatched_bucket_counts():
    with pytest.raises(ValueError, match="one more"):
        percentile_from_buckets(BOUNDS, [1, 0, 0], 0.5)


def test_merge_sums_counts_when_bounds_match():
    a = Histogram(BOUNDS, [1, 2, 3, 4], 10)
    b = Histogram(BOUNDS, [4, 3, 2, 1], 10)
    assert merge_buckets([a, b]) == (BOUNDS, [5, 5, 5, 5])


def test_merge_rebins_other_bounds_onto_their_union_by_width():
    a = Histogram((10.0, 30.0), [0, 4, 0], 4)  # 4 in (10, 30]
    b = Histogram((20.0,), [1, 1], 2)  # 1 in (-inf, 20], 1 in (20, inf)
    bounds, counts = merge_buckets([a, b])
    assert bounds == (10.0, 20.0, 30.0)
    # a's bucket splits 2/2 over (10,20] and (20,30]; b's open buckets stay by their edge.
    assert counts == pytest.approx([0.0, 3.0, 3.0, 0.0])


def test_summarize_uses_sum_min_max_over_series():
    a = Histogram(BOUNDS, [0, 10, 0, 0], 10, sum=150.0, min=11.0, max=19.0)
    b = Histogram(BOUNDS, [0, 0, 10, 0], 10, sum=250.0, min=21.0, max=29.0)
    stats = summarize([a, b])
    assert stats.mean_ms == pytest.approx(20.0)
    assert stats.max_ms == 29.0
    # Merged: min 11, max 29. Rank 10 = top of (11, 20]; rank 18 is 8/10 into (20, 29].
    assert stats.p50_ms == pytest.approx(20.0)
    assert stats.p90_ms == pytest.approx(20.0 + 9.0 * 0.8)


def test_summarize_estimates_max_without_observed_max_and_skips_empty_series():
    a = Histogram(BOUNDS, [0, 4, 0, 0], 4)
    assert summarize([a, Histogram(BOUNDS, [0, 0, 0, 0], 0)]).max_ms == pytest.approx(20.0)
    assert summarize([]) == LatencyStats()
