"""sandbox_sdk.analysis against reference values computed independently of it.

References: the Wilson, t, Welch, McNemar and Holm formulas written out here from
their definitions, table quantiles typed in, statsmodels' documented Wilson values,
and the same scipy call on the same data. Miller, "Adding Error Bars to Evals" (2024)
for clustering repeats.
"""

from __future__ import annotations

import math
import sys
from io import StringIO

import pytest

from sandbox_sdk import (
    AggregateMetric,
    ExperimentInfo,
    ExperimentResults,
    ExperimentState,
    IntervalMethod,
    PowerPlan,
    SampleResult,
    sample_size,
)
from sandbox_sdk.analysis.clusters import Clusters
from sandbox_sdk.analysis.differences import holm_adjusted, paired_difference
from sandbox_sdk.analysis.intervals import bootstrap_interval, summarize_metric, wilson_interval
from sandbox_sdk.analysis.numerics import AnalysisDependencyError
from sandbox_sdk.analysis.power import PowerInputError
from sandbox_sdk.api.v1 import experiment_pb2

scipy_stats = pytest.importorskip("scipy.stats")

Z_975 = 1.959963984540054  # the standard normal's 97.5% quantile
T_975 = {1: 12.706204736, 3: 3.182446305, 4: 2.776445105}  # Student's t, 97.5%, by df


def _wilson(successes: float, n: float, z: float = Z_975) -> tuple[float, float]:
    """Wilson (1927): (p + z²/2n ± z √(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = successes / n
    center = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (center - half) / (1 + z * z / n), (center + half) / (1 + z * z / n)


def _by_input(*groups: list[float]) -> list[tuple[int, float]]:
    return [(index, value) for index, group in enumerate(groups) for value in group]


# --- intervals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # statsmodels proportion_confint(count, 3, method="wilson"), typed in.
        ([1, 1, 0], (0.2076596, 0.9385081)),
        ([0, 0, 0], (0.0, 0.5614970)),
        ([1, 1, 1], (0.4385030, 1.0)),
    ],
)
def test_a_zero_one_score_gets_the_wilson_interval(
    values: list[float], expected: tuple[float, float]
) -> None:
    metric = summarize_metric("contains", list(enumerate(values)))
    assert metric.interval_method is IntervalMethod.WILSON
    assert (metric.ci_low, metric.ci_high) == pytest.approx(expected, abs=1e-6)
    assert (metric.ci_low, metric.ci_high) == pytest.approx(_wilson(sum(values), 3), abs=1e-12)


def test_three_of_three_is_not_certain_and_no_rate_leaves_zero_to_one() -> None:
    # The issue: n=3 `contains` showed [-0.77, 2.10]; 3 of 3 showed [1, 1].
    for values in ([1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]):
        metric = summarize_metric("contains", list(enumerate(values)))
        assert metric.ci_low is not None
        assert metric.ci_high is not None
        assert 0.0 <= metric.ci_low < metric.ci_high <= 1.0
    all_right = summarize_metric("contains", [(0, 1.0), (1, 1.0), (2, 1.0)])
    assert all_right.ci_high == 1.0
    assert all_right.ci_low is not None
    assert all_right.ci_low < 1.0


def test_one_input_has_no_interval_and_one_value_no_spread() -> None:
    single = summarize_metric("exact", [(0, 1.0)])
    assert (single.ci_low, single.ci_high, single.standard_error, single.stddev) == (None,) * 4
    assert single.interval_method is IntervalMethod.NONE
    assert not single.has_interval
    # Three repeats of one input: a spread of values, but still one cluster.
    repeated = summarize_metric("latency_seconds", [(0, 1.0), (0, 2.0), (0, 4.0)])
    assert repeated.stddev == pytest.approx(math.sqrt(7 / 3))
    assert (repeated.inputs, repeated.repeats, repeated.count) == (1, 3, 3)
    assert repeated.interval_method is IntervalMethod.NONE


def test_a_continuous_metric_gets_the_t_interval() -> None:
    metric = summarize_metric("score", list(enumerate([1.0, 2.0, 3.0, 4.0, 5.0])))
    margin = T_975[4] * math.sqrt(2.5) / math.sqrt(5)
    assert metric.interval_method is IntervalMethod.T
    assert metric.stddev == pytest.approx(math.sqrt(2.5))
    assert metric.standard_error == pytest.approx(math.sqrt(2.5 / 5))
    assert (metric.ci_low, metric.ci_high) == pytest.approx((3 - margin, 3 + margin))


def test_repeats_are_clusters_not_independent_samples() -> None:
    # Two inputs, two repeats each: two clusters whose means are -2 and 2.
    metric = summarize_metric("score", _by_input([-3.0, -1.0], [1.0, 3.0]))
    assert (metric.count, metric.inputs, metric.repeats) == (4, 2, 2)
    assert metric.interval_method is IntervalMethod.T
    assert metric.standard_error == pytest.approx(2.0)  # stddev(-2, 2) / √2
    margin = T_975[1] * 2.0  # k - 1 = 1 degree of freedom, not n - 1 = 3
    assert (metric.ci_low, metric.ci_high) == pytest.approx((-margin, margin))


def test_unequal_clusters_use_the_cluster_robust_standard_error() -> None:
    # Miller (2024) eq. 4 with the k/(k-1) correction: residual sums -6 and 6 over n=4.
    clusters = Clusters.of(_by_input([1.0, 2.0, 3.0], [10.0]))
    assert clusters.clustered_variance() == pytest.approx((36 + 36) / 16)
    assert clusters.standard_error() == pytest.approx(math.sqrt(4.5 * 2))


def test_a_rate_with_fully_correlated_repeats_counts_each_input_once() -> None:
    # Every input answered the same way on both repeats: 6 values carry 3 inputs' worth.
    metric = summarize_metric("exact", _by_input([1, 1], [0, 0], [1, 1]))
    assert metric.interval_method is IntervalMethod.WILSON
    assert (metric.ci_low, metric.ci_high) == pytest.approx(_wilson(2, 3))


def test_token_counts_never_get_negative_bounds() -> None:
    tokens = [3.0, 4.0, 250.0, 5.0]
    t_low = sum(tokens) / 4 - T_975[3] * scipy_stats.tstd(tokens) / 2
    assert t_low < 0  # what the t interval would say
    metric = summarize_metric("completion_tokens", list(enumerate(tokens)))
    assert metric.interval_method is IntervalMethod.BOOTSTRAP
    assert metric.ci_low is not None
    assert metric.ci_high is not None
    assert 0.0 <= metric.ci_low <= metric.mean <= metric.ci_high
    assert summarize_metric("completion_tokens", list(enumerate(tokens))) == metric


def test_the_bootstrap_agrees_with_scipys_percentile_bootstrap() -> None:
    values = [0.2, 0.4, 0.1, 3.5, 0.3, 0.25, 0.6, 0.15, 1.8, 0.05, 0.4, 0.3]
    low, high = bootstrap_interval(Clusters.of(enumerate(values)))
    reference = scipy_stats.bootstrap(
        (values,), scipy_stats.tmean, method="percentile", n_resamples=20000, rng=1
    ).confidence_interval
    width = reference.high - reference.low
    assert low == pytest.approx(reference.low, abs=0.05 * width)
    assert high == pytest.approx(reference.high, abs=0.05 * width)


def test_the_wilson_formula_itself() -> None:
    assert wilson_interval(0.5, 10) == pytest.approx(_wilson(5, 10))
    assert wilson_interval(0.9, 50, confidence=0.9) == pytest.approx(
        _wilson(45, 50, z=1.6448536269514722)
    )


def test_an_aggregate_crosses_the_wire_intact() -> None:
    metric = summarize_metric("exact", _by_input([1, 0], [1, 1], [0, 0]), failed=2)
    assert AggregateMetric.from_proto(metric.to_proto()) == metric
    none = summarize_metric("exact", [(0, 1.0)])
    message = none.to_proto()
    assert not message.HasField("ci_low")
    assert not message.HasField("stddev")
    assert message.interval_method == experiment_pb2.INTERVAL_METHOD_NONE
    assert AggregateMetric.from_proto(message) == none


def test_an_aggregate_from_a_server_without_interval_methods_reads_as_t() -> None:
    legacy = experiment_pb2.AggregateMetric(name="m", count=3, mean=2.0, ci_low=1.0, ci_high=3.0)
    metric = AggregateMetric.from_proto(legacy)
    assert metric.interval_method is IntervalMethod.T
    assert (metric.ci_low, metric.ci_high) == (1.0, 3.0)


def test_statistics_without_scipy_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(AnalysisDependencyError, match=r"sandbox-sdk\[analysis\]"):
        summarize_metric("exact", [(0, 1.0), (1, 0.0)])


# --- comparisons -------------------------------------------------------------------------


def _results(
    experiment_id: str, scores: list[list[float]], prompts: str = "pq", **measurements: float
) -> ExperimentResults:
    samples = [
        SampleResult(
            input_index=index,
            repeat=repeat,
            prompt=prompts[index % len(prompts)] + str(index),
            output="",
            scores={"exact": value},
            **measurements,
        )
        for index, repeats in enumerate(scores)
        for repeat, value in enumerate(repeats)
    ]
    info = ExperimentInfo(experiment_id, "env-1", ExperimentState.SUCCEEDED)
    return ExperimentResults(info, samples)


def test_all_right_against_all_wrong_on_two_inputs_is_not_beyond_noise() -> None:
    a = _results("a", [[1], [1]])
    b = _results("b", [[0], [0]])
    exact = a.compare(b)["exact"]
    # Exact McNemar: both discordant pairs favour a; two-sided P(X=0)+P(X=2), X~Bin(2, ½).
    assert exact.test == "exact-mcnemar"
    assert exact.paired
    assert exact.p_value == pytest.approx(0.25 + 0.25)
    assert exact.significant is False
    assert exact.ci_low is not None
    assert exact.ci_high is not None
    assert exact.ci_low <= 0.0 <= exact.ci_high  # the interval agrees: zero is plausible
    assert exact.difference == -1.0


def test_mcnemar_counts_only_discordant_pairs() -> None:
    # 10 inputs: 2 both right, 7 only b right, 1 only a right: p = 2 P(X<=1), X~Bin(8, ½).
    a = _results("a", [[1], [1], *([[0]] * 7), [1]])
    b = _results("b", [[1], [1], *([[1]] * 7), [0]])
    exact = a.compare(b)["exact"]
    assert exact.test == "exact-mcnemar"
    assert exact.p_value == pytest.approx(2 * (1 + 8) / 2**8)
    assert exact.difference == pytest.approx(0.6)
    binomial = scipy_stats.binomtest(7, 8, 0.5).proportion_ci(method="exact")
    assert (exact.ci_low, exact.ci_high) == pytest.approx(
        ((2 * binomial.low - 1) * 0.8, (2 * binomial.high - 1) * 0.8)
    )


def test_continuous_scores_on_the_same_inputs_get_the_paired_t_test() -> None:
    a_values = [0.2, 0.5, 0.4, 0.9, 0.3]
    b_values = [0.3, 0.7, 0.4, 1.0, 0.6]
    a = _results("a", [[v] for v in a_values])
    b = _results("b", [[v] for v in b_values])
    exact = a.compare(b)["exact"]
    differences = [y - x for x, y in zip(a_values, b_values, strict=True)]
    mean = sum(differences) / 5
    se = scipy_stats.tstd(differences) / math.sqrt(5)
    assert exact.test == "paired-t"
    assert exact.paired
    assert exact.difference == pytest.approx(mean)
    assert (exact.ci_low, exact.ci_high) == pytest.approx(
        (mean - T_975[4] * se, mean + T_975[4] * se)
    )
    assert exact.p_value == pytest.approx(scipy_stats.ttest_rel(b_values, a_values).pvalue)


def test_repeats_are_compared_as_per_input_means() -> None:
    # Two inputs x two repeats: two pairs, not four.
    a = _results("a", [[1, 0], [0, 0]])
    b = _results("b", [[1, 1], [1, 1]])
    exact = a.compare(b)["exact"]
    assert exact.test == "paired-t"
    assert exact.inputs_a == 2
    assert exact.count_a == 4
    assert exact.p_value == pytest.approx(scipy_stats.ttest_rel([1.0, 1.0], [0.5, 0.0]).pvalue)
    assert exact.significant is False


def test_the_same_shift_on_every_input_is_judged_by_the_sign_test() -> None:
    a = _results("a", [[1, 1], [1, 1]])
    b = _results("b", [[0, 0], [0, 0]])
    exact = a.compare(b)["exact"]
    assert exact.test == "exact-sign"
    assert exact.p_value == pytest.approx(0.5)
    assert exact.significant is False


def test_different_inputs_get_welchs_test() -> None:
    # Textbook Welch: difference 2.5, Welch-Satterthwaite df 6.98077, interval from 0.23478.
    a = _results("a", [[v] for v in (1.0, 2.0, 3.0, 4.0)], prompts="x")
    b = _results("b", [[v] for v in (3.0, 4.0, 5.0, 6.0, 7.0)], prompts="y")
    exact = a.compare(b)["exact"]
    assert exact.test == "welch-t"
    assert not exact.paired
    assert exact.difference == pytest.approx(2.5)
    assert exact.ci_low == pytest.approx(0.23478, abs=1e-4)
    welch = scipy_stats.ttest_ind([3, 4, 5, 6, 7], [1, 2, 3, 4], equal_var=False)
    assert exact.p_value == pytest.approx(welch.pvalue)


def test_fewer_than_two_pairs_cannot_be_judged() -> None:
    exact = _results("a", [[1]]).compare(_results("b", [[0]]))["exact"]
    assert (exact.ci_low, exact.ci_high, exact.p_value, exact.significant) == (None,) * 4
    assert exact.test == "none"


def test_holm_adjusts_by_rank() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> monotone 0.06.
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005, None]) == pytest.approx(
        [0.03, 0.06, 0.06, 0.02, None]
    )
    assert holm_adjusted([0.04, 0.01]) == pytest.approx([0.04, 0.02])
    assert holm_adjusted([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_significance_uses_the_holm_adjusted_p_value() -> None:
    a = _results("a", [[0]] * 9 + [[1]], latency_seconds=1.0)
    b = _results("b", [[1]] * 9 + [[1]], latency_seconds=1.0)
    comparison = a.compare(b)
    exact = comparison["exact"]
    assert exact.p_value == pytest.approx(2 / 2**9)
    tested = [m for m in comparison.metrics if m.p_value is not None]
    assert exact.p_value_adjusted == pytest.approx(
        holm_adjusted([m.p_value for m in tested])[tested.index(exact)]
    )
    assert exact.significant is True
    assert comparison.significant() == [exact]


def test_a_metric_no_input_changed_has_nothing_to_test_and_stays_out_of_holm() -> None:
    same = paired_difference({0: 1.0, 1: 0.0}, {0: 1.0, 1: 0.0}, binary_single_repeat=True)
    assert (same.difference, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, None)
    assert same.test == "none"
    # prompt_tokens is the same on both sides (same prompts): only exact is in the family.
    a = _results("a", [[0]] * 7 + [[1]])
    b = _results("b", [[1]] * 7 + [[1]])
    comparison = a.compare(b)
    assert comparison["prompt_tokens"].p_value is None
    assert comparison["exact"].p_value_adjusted == comparison["exact"].p_value


# --- failures and tables -------------------------------------------------------------------


def _render(table: object) -> str:
    from rich.console import Console

    console = Console(file=StringIO(), width=200)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_score_failures_and_the_table_show_them() -> None:
    samples = [
        SampleResult(0, 0, "p", "o", scores={"exact": 1.0}, score_errors={"judge": "timeout"}),
        SampleResult(1, 0, "q", "o", scores={"exact": 0.0}, score_errors={"judge": "timeout"}),
        SampleResult(2, 0, "r", "o", score_errors={"judge": "timeout", "exact": "boom"}),
    ]
    results = ExperimentResults(
        ExperimentInfo("exp-1", "env-1", ExperimentState.SUCCEEDED),
        samples,
        metrics={
            "exact": summarize_metric("exact", [(0, 1.0), (1, 0.0)], failed=1),
            "judge": summarize_metric("judge", [], failed=3),
            "latency_seconds": summarize_metric("latency_seconds", [(0, 0.5)]),
        },
    )
    assert results.score_failures() == {"exact": 1, "judge": 3}
    judge = results.metrics["judge"]
    assert (judge.count, judge.failed, judge.interval_method) == (0, 3, IntervalMethod.NONE)
    text = _render(results.to_table())
    assert "3 failed" in text
    assert "1 failed" in text
    assert "n/a" in text


def test_score_failures_come_from_the_aggregates_without_samples() -> None:
    results = ExperimentResults(
        ExperimentInfo("exp-1", "env-1", ExperimentState.SUCCEEDED),
        metrics={"judge": summarize_metric("judge", [], failed=2)},
    )
    assert results.score_failures() == {"judge": 2}


# --- power ---------------------------------------------------------------------------------


def test_sample_size_for_a_continuous_metric() -> None:
    plan = sample_size(difference=1.0, stddev=2.0)
    assert isinstance(plan, PowerPlan)
    variance = 2 * 2.0**2  # two independent per-input values
    normal = (Z_975 + 0.8416212335729143) ** 2 * variance  # 62.79
    assert plan.inputs >= math.ceil(normal)

    def required(n: int) -> float:
        t = scipy_stats.t
        return float((t.ppf(0.975, n - 1) + t.ppf(0.8, n - 1)) ** 2 * variance)

    assert required(plan.inputs) <= plan.inputs
    assert required(plan.inputs - 1) > plan.inputs - 1
    assert plan.inputs == 65
    assert "paired t" in plan.method
    assert str(plan.inputs) in plan.describe()


def test_sample_size_for_a_rate() -> None:
    plan = sample_size(difference=0.1, rate=0.5)
    normal = (Z_975 + 0.8416212335729143) ** 2 * (0.25 + 0.6 * 0.4) / 0.01
    assert math.ceil(normal) <= plan.inputs <= math.ceil(normal) + 3
    assert plan.assumed_rate == 0.5
    assert plan.assumed_stddev is None


def test_sample_size_from_a_baseline_uses_its_repeats() -> None:
    # Within each input the repeats differ by 2; between inputs the means differ too.
    baseline = ExperimentResults(
        ExperimentInfo("base", "env-1", ExperimentState.SUCCEEDED),
        [
            SampleResult(i, r, f"p{i}", "", scores={"judge": base + (1.0 if r else -1.0)})
            for i, base in enumerate([3.0, 5.0, 4.0, 6.0])
            for r in range(2)
        ],
    )
    one = sample_size(difference=1.0, baseline=baseline, metric="judge")
    four = sample_size(difference=1.0, baseline=baseline, metric="judge", repeats=4)
    values = [v for base in (3.0, 5.0, 4.0, 6.0) for v in (base - 1, base + 1)]
    within = 2.0  # each input's two values are base ± 1: variance 2 with one df
    assert one.assumed_stddev == pytest.approx(scipy_stats.tstd(values))
    assert one.within_share == pytest.approx(within / scipy_stats.tvar(values))
    assert four.inputs < one.inputs
    assert "between repeats" in four.method


def test_sample_size_refuses_what_does_not_determine_it() -> None:
    with pytest.raises(PowerInputError):
        sample_size(difference=0.1)
    with pytest.raises(PowerInputError):
        sample_size(difference=0.0, rate=0.5)
    with pytest.raises(PowerInputError):
        sample_size(difference=0.1, rate=0.5, repeats=0)
