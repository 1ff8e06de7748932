"""``infergw worker``'s options: read-ahead on by default, off with 0, never negative."""

from __future__ import annotations

import pytest

from async_worker.__main__ import build_parser


def test_reading_ahead_is_on_by_default_and_0_turns_it_off() -> None:
    assert build_parser().parse_args([]).read_ahead == 2
    assert build_parser().parse_args(["--read-ahead", "0"]).read_ahead == 0


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_read_ahead_that_is_not_a_count_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--read-ahead", value])
    assert exited.value.code == 2
    assert "--read-ahead" in capsys.readouterr().err
