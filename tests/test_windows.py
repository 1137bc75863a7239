"""The window plan (pure) and the official timestep list."""

from __future__ import annotations

import pytest

from xportrait_cli.pipeline.schedule import alphas_cumprod, make_scheduler
from xportrait_cli.pipeline.timesteps import official_timesteps
from xportrait_cli.pipeline.windows import WINDOW, frame_counts, last_positions, window_plan, window_starts


def test_case_a_windows_match_the_official_plan(shared):
    import json

    case = json.loads((shared / "golden" / "case_a.json").read_text())
    for offset, expected, counts in zip(
        case["offsets"], case["windows_per_step"], case["counts_per_step"], strict=True
    ):
        plan = window_plan(case["N"], offset, case["num_mix"])
        assert plan == expected
        assert frame_counts(case["N"], plan) == counts


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 5, 15, 16, 17, 20, 28, 29, 59, 60, 100, 301])
@pytest.mark.parametrize("num_mix", [0, 4, 8, 15])
def test_every_frame_is_covered_every_step(num_frames, num_mix):
    for offset in {0, num_frames // 2, num_frames - 1}:
        plan = window_plan(num_frames, offset, num_mix)
        assert all(len(w) == WINDOW for w in plan)
        assert all(0 <= i < num_frames for w in plan for i in w)
        assert min(frame_counts(num_frames, plan)) >= 1  # no frame left without a prediction (no NaN)


def test_windows_wrap_around_the_clip():
    plan = window_plan(20, 18, num_mix=4)
    assert plan[0] == [18, 19, *range(14)]
    assert plan[1] == [*range(10, 20), *range(6)]


def test_window_count_and_stride():
    # ceil((N - num_mix) / (16 - num_mix)) windows, consecutive starts 12 apart (spec §4)
    for n, windows in ((59, 5), (100, 8), (300, 25), (60, 5)):
        starts = window_starts(n, 7, num_mix=4)
        assert len(starts) == windows
        assert all(b - a == 12 for a, b in zip(starts, starts[1:], strict=False))
    n = 29  # not a multiple of the stride: the last window overlaps the first more
    assert window_starts(n, 0, 4) == [0, 12, 24]
    assert frame_counts(n, window_plan(n, 0, 4)) == [2] * 11 + [1] + [2] * 4 + [1] * 8 + [2] * 4 + [1]


def test_short_clips_repeat_frames_and_single_images_get_one_window():
    assert window_plan(3, 1, num_mix=4) == [[(1 + i) % 3 for i in range(16)]]  # official: empty -> NaN
    assert window_plan(1, 0, num_mix=4) == [[0] * 16]
    assert window_plan(10, 0, num_mix=4) == [[i % 10 for i in range(16)]]


def test_last_write_wins_for_repeated_frames():
    frames, positions = last_positions([2, 0, 1, 2, 0, 1, 2])
    assert sorted(zip(frames, positions, strict=True)) == [(0, 4), (1, 5), (2, 6)]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_mix"):
        window_plan(20, 0, num_mix=16)
    with pytest.raises(ValueError, match="offset"):
        window_plan(20, 20, num_mix=4)
    with pytest.raises(ValueError, match="num_frames"):
        window_plan(0, 0, num_mix=4)


def test_scheduler_steps_with_official_alphas():
    scheduler = make_scheduler(30)
    assert scheduler.timesteps.tolist() == official_timesteps(30)
    ac = alphas_cumprod()
    assert abs(ac[0].item() - 0.99915) < 1e-6 and abs(ac[999].sqrt().item() - 0.06826492) < 1e-7
    assert scheduler.final_alpha_cumprod.item() == ac[0].item()
