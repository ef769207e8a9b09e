"""The evaluator against deliberately broken generators (benchmark/metrics/validation.py):
each breakage moves the metrics meant to catch it the bad way by more than MARGIN times the
real-vs-real range, and leaves the metrics KEEPS names near their real-vs-real value."""
import pytest

from benchmark.cli import main
from benchmark.metrics import factors, validation


@pytest.fixture(scope="module")
def verdict():
    weights = factors.evaluator_weights("easy", "/nonexistent-cache")   # the shipped evaluator
    table = validation.validate(weights, n=400, repeats=5, reference_size=1000)
    return table, validation.judge(table)


@pytest.mark.parametrize("broken", list(validation.CATCHES))
def test_each_breakage_is_caught_by_its_metrics(verdict, broken):
    _, v = verdict
    rows = v[(v.set == broken) & v.must_catch]
    missed = rows[~rows.caught]
    assert missed.empty, f"{broken}: not caught by " + ", ".join(
        f"{m.metric} ({m.value:.4g} vs real {m.real_mean:.4g} ± {m.real_spread:.2g}: {m.moved_spreads:.1f} ranges)"
        for m in missed.itertuples())


@pytest.mark.parametrize("broken", [b for b, keep in validation.KEEPS.items() if keep])
def test_each_breakage_leaves_the_other_factors_alone(verdict, broken):
    _, v = verdict
    rows = v[(v.set == broken) & v.must_keep]
    moved = rows[~rows.kept]
    assert moved.empty, f"{broken}: moved " + ", ".join(
        f"{m.metric} ({m.value:.4g} vs real {m.real_mean:.4g} ± {m.real_spread:.2g})" for m in moved.itertuples())


def test_the_two_hue_failure_of_the_old_evaluator_is_now_seen(verdict):
    """The issue this evaluator answers: every sample in one of two hues. Its hue distance is
    over 5 times the worst real-vs-real value and its hue coverage at most 3 of 12 bins."""
    table, _ = verdict
    two = table.set_index("set").loc["two hues"]
    real = table[table.set.str.startswith("real ")]
    assert two.factor_hue_w1 > 0.1 > 5 * real.factor_hue_w1.max()
    assert two.factor_hue_coverage <= 3 / 12 and real.factor_hue_coverage.min() == 1.0


def test_cli_writes_the_table_and_refuses_bad_input(tmp_path, capsys):
    assert main(["validate-evaluator", "--samples", "1", "--results", str(tmp_path)]) == 2
    assert "--samples=1 is too small" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
