"""Long commands report progress with an ETA: a bar on a terminal, a line at most every few seconds otherwise."""

from __future__ import annotations

import io

from steering_server.progress import Progress, format_duration


def test_log_lines_carry_the_count_and_the_time_left() -> None:
    out = io.StringIO()
    with Progress(4, "realign", file=out, every_s=0.0) as bar:
        for loss in (4.0, 3.0, 2.0, 1.0):
            bar.update(1, loss=loss)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("[realign] 1/4 steps (25%), ") and "ETA " in lines[0]
    assert lines[-1].startswith("[realign] 4/4 steps (100%)") and lines[-1].endswith("ETA 0s, loss 1")


def test_lines_are_rate_limited_but_the_last_one_is_always_written() -> None:
    out = io.StringIO()
    with Progress(100, "build", file=out, every_s=3600.0) as bar:
        for _ in range(100):
            bar.update()
    counts = [line.split(" (")[0] for line in out.getvalue().splitlines()]
    assert counts == ["[build] 1/100 steps", "[build] 100/100 steps"]


def test_a_terminal_gets_a_bar_and_log_lines_above_it() -> None:
    out = io.StringIO()
    with Progress(3, "realign", file=out, tty=True) as bar:
        bar.write("[realign] step 0")
        bar.update(3)
    text = out.getvalue()
    assert "[realign] step 0\n" in text and "3/3" in text and "\r" in text


def test_durations_read_as_minutes_and_hours() -> None:
    assert [format_duration(s) for s in (4.4, 75, 3725)] == ["4s", "1m15s", "1h02m"]


def test_the_organism_build_states_its_time_left_after_each_stage() -> None:
    from steering_server.organism.build import BUILD_STAGES, READ_STAGE, StageTimer

    lines: list[str] = []
    timer = StageTimer(lines.append, BUILD_STAGES)
    for stage in BUILD_STAGES:
        timer.done(stage)
    assert lines[0].startswith("[organism] 1/10 pretrain: ") and "left)" in lines[0]
    assert all("about " in line for line in lines[:-1]) and "left" not in lines[-1]  # the last: nothing left
    rest = {k: v for k, v in BUILD_STAGES.items() if k not in ("pretrain", "finetune")}
    reused = StageTimer(lines.append, {READ_STAGE: 1.0, **rest})
    reused.done(READ_STAGE)
    assert lines[-1].startswith("[organism] 1/9 ") and "about " in lines[-1]  # a build reusing trained models
