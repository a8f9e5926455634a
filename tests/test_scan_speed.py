"""`python -m benchmarks.scan_speed`: what it times is the same gradient at every chunk size."""

import chex
import jax
import pytest

from benchmarks import scan_speed


def test_programs_compute_the_same_gradient_and_the_table_has_every_row(capsys):
    key = jax.random.PRNGKey(0)
    reference = scan_speed.gradient_program(1, rows=2, steps=30)(key)
    chunked = scan_speed.gradient_program(8, rows=2, steps=30)(key)
    chex.assert_trees_all_close(chunked, reference, rtol=1e-3, atol=1e-5)
    table = scan_speed.main(["--rows", "2", "--steps", "30", "--chunks", "8", "--min_time", "0"])
    assert [(r["rows"], r["steps"], r["chunk"]) for r in table] == [(2, 30, 1), (2, 30, 8)]
    assert table[0]["vs_chunk_1"] == 1.0 and all(r["ms"] > 0 for r in table)
    assert "vs chunk 1" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [(["--chunks", "0"], "--chunks must be positive"),
                                          (["--rows", "-1"], "--rows must be positive"),
                                          (["--min_time", "-1"], "--min_time must be >= 0")])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        scan_speed.parse_args(argv)
    assert message in capsys.readouterr().err
