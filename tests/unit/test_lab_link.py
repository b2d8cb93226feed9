"""The lab's private link is shaped like a real one (issue 13): a token bucket on each host's private egress."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from standby.lab.topology import PRIVATE_MBIT, LabSpec, rate_limit_argv

# The coarsest timer tick a kernel may run at (HZ=250): a bucket smaller than one tick's worth of
# tokens caps the rate below the one asked for.
TICK_S = 0.004


def test_i13_a_lab_private_link_defaults_to_1_gbit() -> None:
    assert PRIVATE_MBIT == 1000
    assert LabSpec("x").private_mbit == 1000


def test_i13_the_rate_limit_is_a_token_bucket_at_the_rate() -> None:
    argv = rate_limit_argv("priv0", 1000)
    assert argv[:7] == ["tc", "qdisc", "replace", "dev", "priv0", "root", "tbf"]
    assert argv[argv.index("rate") + 1] == "1000mbit"


@given(st.integers(min_value=1, max_value=100_000))
def test_i13_the_bucket_holds_at_least_a_timer_tick_of_the_rate(mbit: int) -> None:
    argv = rate_limit_argv("priv0", mbit)
    assert int(argv[argv.index("burst") + 1]) >= mbit * 1_000_000 / 8 * TICK_S


def test_i13_a_negative_rate_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match="private_mbit"):
        LabSpec("x", private_mbit=-1)
    assert LabSpec("x", private_mbit=0).private_mbit == 0  # no limit
