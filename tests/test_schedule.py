"""Learning-rate schedules and progressive resizing at known points."""
import pytest

from conftest import REPO
from pipeline.data import ramp_shortfall, resolution_at, shard_indices
from pipeline.config import parse_overrides, resolve
from pipeline.schedule import WARMUP_START, lr_factor, lr_shortfall, scaled_lr
from pipeline.trainer import epoch_line, recipe_shortfalls, time_to_finish


def test_lr_scales_with_global_batch():
    assert scaled_lr(0.10625, 8 * 512) == pytest.approx(1.7)


@pytest.mark.parametrize("position, expected", [
    (0.0, WARMUP_START), (1.0, 0.5 + WARMUP_START / 2), (2.0, 1.0), (45.0, 0.5), (87.0, 1 / 86), (88.0, 0.0)])
def test_triangular_is_ffcv_imagenets(position, expected):
    assert lr_factor("triangular", position, 88, warmup_epochs=2) == pytest.approx(expected)


@pytest.mark.parametrize("position, expected", [(0, 1.0), (29.99, 1.0), (30, 0.1), (59.5, 0.1), (60, 0.01),
                                                (89.9, 0.01)])
def test_step_multiplies_by_gamma_at_milestones(position, expected):
    assert lr_factor("step", position, 90, 0, [30, 60], 0.1) == pytest.approx(expected)


@pytest.mark.parametrize("position, expected", [(0.5, WARMUP_START + (1 - WARMUP_START) / 2), (1, 1.0),
                                                (6, 0.5), (11, 0.0)])
def test_cosine_with_warmup(position, expected):
    assert lr_factor("cosine", position, 11, warmup_epochs=1) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("epoch, expected", [(0, 160), (65, 160), (70, 160), (71, 192), (76, 192), (87, 192)])
def test_progressive_resizing_rn50_88ep(epoch, expected):
    # 160 + (epoch - 65) / 11 * 32 = 174.5 at epoch 70 (rounds to 160), 177.5 at 71 (rounds to 192)
    assert resolution_at(epoch, 160, 192, 65, 76) == expected


def test_progressive_resizing_wide_ramp():
    values = [resolution_at(e, 128, 256, 0, 4) for e in range(6)]
    assert values == [128, 160, 192, 224, 256, 256]
    # np.round rounds halves to even, as in ffcv-imagenet: 176 -> 192, 208 -> 192
    assert [resolution_at(e, 160, 224, 10, 14) for e in (9, 10, 11, 12, 13, 14)] == [160, 160, 192, 192, 192, 224]
    assert resolution_at(0, 160, 192, 0, 0) == 192  # no ramp: max_res throughout


def test_the_ramps_ends_are_the_resolutions_asked_for():
    """As ffcv-imagenet: min_res up to start_ramp, max_res from end_ramp on, only the ramp between rounded. A
    max_res of 200 used to train at 192, and a fixed 200 at 200: the same setting, two meanings."""
    assert [resolution_at(e, 176, 200, 2, 6) for e in (0, 2, 3, 4, 6, 9)] == [176, 176, 192, 192, 200, 200]
    # the ramp's rounded steps stay between its ends (205 rounds to 192)
    assert [resolution_at(e, 200, 210, 0, 2) for e in range(3)] == [200, 200, 210]


def test_a_ramp_past_the_last_epoch_is_named():
    """rn18_16ep with --training.epochs=2 (README's example) never left 160 px, and nothing said so."""
    assert ramp_shortfall(2, 160, 192, 11, 13) == ("resolution.end_ramp 13 is past training.epochs 2: the last "
                                                   "epoch trains at 160 px, not resolution.max_res 192")
    assert ramp_shortfall(16, 160, 192, 11, 13) is None
    assert ramp_shortfall(12, 160, 192, 11, 13) is not None  # epoch 12 (index 11) is still at 160
    assert ramp_shortfall(2, 160, 192, 0, 0) is None  # no ramp: max_res throughout


@pytest.mark.parametrize("samples, world", [(49, 2), (50, 3), (7, 4), (1000, 8)])
def test_val_shards_cover_exactly_once(samples, world):
    shards = [shard_indices(samples, rank, world) for rank in range(world)]
    joined = sorted(i for shard in shards for i in shard)
    assert joined == list(range(samples))


def test_a_warmup_or_step_milestones_past_the_last_epoch_are_named():
    """ssenet_rn18 (step at epochs 30 and 60) with --training.epochs=16 trained at its peak lr to the end, and
    rn50_88ep (2 warmup epochs) run for one never reached its peak; nothing said so."""
    assert lr_shortfall("step", 16, 0, [30, 60]) == (
        "lr.milestones 30, 60 are past the last epoch (training.epochs 16): the lr is multiplied by lr.gamma 0 "
        "times, not 2")
    assert lr_shortfall("step", 40, 0, [60, 30]) == (
        "lr.milestones 60 is past the last epoch (training.epochs 40): the lr is multiplied by lr.gamma 1 time, "
        "not 2")
    assert lr_shortfall("step", 60, 0, [30, 60]) is not None  # epoch 60 is the 61st: never trained
    assert lr_shortfall("step", 90, 0, [30, 60]) is None
    assert lr_shortfall("step", 16, 0, [15.5]) is None  # halfway into the last epoch
    assert lr_shortfall("triangular", 16, 2, [30, 60]) is None  # no milestones in that schedule
    assert lr_shortfall("triangular", 1, 2, []) == ("lr.warmup_epochs 2 is past the last epoch (training.epochs 1): "
                                                    "the lr rises to 50 % of its peak (lr.lr) and the run ends")
    assert lr_shortfall("triangular", 2, 2, []) is None


@pytest.mark.parametrize("recipe, epochs, notes", [
    ("ssenet_rn18", 16, ["lr.milestones 30, 60 are past the last epoch"]),
    ("rn18_16ep", 2, ["resolution.end_ramp 13 is past training.epochs 2"]),
    ("rn18_16ep", 1, ["resolution.end_ramp 13 is past", "lr.warmup_epochs 2 is past"]),
    ("ssenet_rn18", 90, []), ("rn18_16ep", 16, [])])
def test_a_run_shorter_than_its_recipe_says_what_it_ends_before(recipe, epochs, notes):
    config = resolve(REPO / "recipes" / f"{recipe}.yaml", parse_overrides([f"--training.epochs={epochs}"]))
    said = recipe_shortfalls(config)
    assert len(said) == len(notes) and all(note.startswith(start) for note, start in zip(said, notes)), said


def test_the_time_to_finish_scales_each_epoch_left_by_its_pixels():
    """An 88-epoch run printed its elapsed seconds alone; a 192 px epoch takes about 1.44 of a 160 px one."""
    history = [{"epoch": 1, "resolution": 160, "wall_time": 100.0}, {"epoch": 2, "resolution": 160, "wall_time": 190.0}]
    ramp = [160, 192, 2, 3]  # epochs 3 at 160 px, 4 and 5 at 192
    assert time_to_finish(history, 5, ramp) == pytest.approx(90 + 2 * 90 * (192 / 160) ** 2)
    assert time_to_finish(history[:1], 2, ramp) == pytest.approx(100.0)  # the first epoch: its whole time
    assert time_to_finish(history, 2, ramp) is None
    # a compiled run's first epoch: the minute its first step spent compiling is not spent again
    assert time_to_finish(history[:1], 4, ramp, one_off_seconds=60.0) == pytest.approx(40 + 40 + 40 * (192 / 160) ** 2)
    metrics = {"lr": 0.1, "train_loss": 2.0, "train_images_per_s": 300.0, "first_step_seconds": 0.5}
    assert epoch_line(1, 160, metrics, 190.0, 3725.0, False).endswith("300 img/s | 0:03:10, ≈ 1:02:05 to go")
    assert epoch_line(4, 192, metrics, 500.0, None, False).endswith("| 0:08:20")
