"""The steps' clock shared by rejoin, switchover and the agent's operations."""

from __future__ import annotations

from standby.agent.opsteps import Marks
from standby.laps import Laps


class Ticks:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_each_lap_is_the_time_since_the_previous_one_or_the_start() -> None:
    into: list[tuple[str, float]] = []
    laps = Laps(into, clock=Ticks(10.0, 10.5, 12.0, 12.0))
    assert laps.lap("a") == 0.5
    assert laps.lap("b") == 1.5
    assert laps.lap("c") == 0.0
    assert into == [("a", 0.5), ("b", 1.5), ("c", 0.0)] and laps.ends == [10.5, 12.0, 12.0]


def test_kept_seconds_are_rounded_when_asked_and_the_returned_ones_are_not() -> None:
    laps = Laps(digits=2, clock=Ticks(0.0, 0.123456))
    assert laps.lap("x") == 0.123456 and laps.steps == [("x", 0.12)]


def test_an_operation_s_marks_say_when_each_step_ended() -> None:
    m = Marks()
    m.mark("one")
    m.mark("two")
    assert [name for name, _ in m.steps] == ["one", "two"]
    assert [row[0] for row in m.detail()] == ["one", "two"] and m.detail()[0][2] <= m.detail()[1][2]
