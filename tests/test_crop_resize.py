"""The numba shrink against OpenCV's INTER_AREA (what ffcv's decoders call), and the decoders against ffcv's."""
import os

import cv2
import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToTensor

from conftest import run_script
from pipeline.crop_resize import CenterCropDecoder, RandomResizedCropDecoder, area_shrink, crop_resize, image_pixels
from pipeline.data import LabelDecoder
from pipeline.numba_cache import cached_njit


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients with sharp noise on top: every rounding case of the box filter, and saturated pixels."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    smooth = 127 + 120 * np.sin(rows[..., None] / 17 + columns[..., None] / 23 + np.arange(3))
    return np.clip(smooth + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def opencv(image, box, size):
    out = np.empty((*size, 3), np.uint8)
    resize_crop(image, *box, out)
    return out


def ours(function, image, box, size):
    out = np.empty((*size, 3), np.uint8)
    function(image, *box, out)
    return out


def shrink_cases(count: int, seed: int):
    """(image, (top, bottom, left, right), (H, W)) with the crop larger than H x W by non-integer factors."""
    rng = np.random.default_rng(seed)
    for case in range(count):
        image = photo_like(int(rng.integers(40, 300)), int(rng.integers(40, 300)), seed + case)
        height, width = int(rng.integers(7, 40)), int(rng.integers(7, 40))
        rows = int(rng.integers(height + 1, image.shape[0] + 1)) if image.shape[0] > height else image.shape[0]
        columns = int(rng.integers(width + 1, image.shape[1] + 1)) if image.shape[1] > width else image.shape[1]
        top, left = int(rng.integers(0, image.shape[0] - rows + 1)), int(rng.integers(0, image.shape[1] - columns + 1))
        yield image, (top, top + rows, left, left + columns), (height, width)


def test_area_shrink_gives_opencvs_pixels():
    differing = total = 0
    for image, box, size in shrink_cases(60, seed=0):
        expected, got = opencv(image, box, size), ours(area_shrink, image, box, size)
        gap = np.abs(expected.astype(int) - got)
        assert gap.max() <= 1, (image.shape, box, size)  # a rounding tie summed in another order
        differing, total = differing + np.count_nonzero(gap), total + gap.size
    assert differing / total < 1e-3


@pytest.mark.parametrize("rows, columns, size", [
    (176, 176, (176, 176)),   # the same size
    (96, 300, (176, 176)),    # grows in one direction
    (60, 70, (176, 176)),     # grows in both
    (352, 264, (176, 88)),    # shrinks by whole factors (2 and 3)
    (270, 311, (176, 176)),   # shrinks by non-integer factors
    (176, 263, (176, 176)),   # one direction kept, one shrunk
])
def test_crop_resize_gives_opencvs_pixels_for_every_kind_of_crop(rows, columns, size):
    image = photo_like(400, 400, seed=rows + columns)
    box = (13, 13 + rows, 29, 29 + columns)
    assert np.abs(opencv(image, box, size).astype(int) - ours(crop_resize, image, box, size)).max() <= 1


def top_left_crop(height, width, scale, ratio):
    """A fixed crop (ffcv's generators are random): 4/5 of the height and 7/10 of the width."""
    return 0, 0, (height * 4) // 5, (width * 7) // 10


class FixedCrop(RandomResizedCropRGBImageDecoder):
    get_crop_generator = property(lambda self: top_left_crop)


class OursFixedCrop(RandomResizedCropDecoder):
    get_crop_generator = property(lambda self: top_left_crop)


def decoded(beton, decoder) -> np.ndarray:
    loader = Loader(str(beton), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [decoder, ToTensor()], "label": [IntDecoder(), ToTensor()]})
    return np.concatenate([images.numpy().copy() for images, _ in loader])


@pytest.mark.parametrize("theirs, mine", [
    (CenterCropRGBImageDecoder((40, 40), ratio=224 / 256), CenterCropDecoder((40, 40), ratio=224 / 256)),
    (FixedCrop((24, 24)), OursFixedCrop((24, 24))),
])
def test_decoders_give_ffcvs_images(tiny_betons, theirs, mine):
    """JPEG and raw images of the tiny betons (64 px), shrunk by non-integer factors, through ffcv's loader."""
    expected, got = decoded(tiny_betons / "val.beton", theirs), decoded(tiny_betons / "val.beton", mine)
    assert expected.shape == got.shape == (49, *theirs.output_size, 3)
    gap = np.abs(expected.astype(int) - got)
    assert gap.max() <= 1 and np.count_nonzero(gap) / gap.size < 1e-3


def test_the_shrink_runs_where_numba_has_nowhere_to_cache(tiny_betons):
    """A read-only install whose user has no writable home (docker run --user on an image's code): numba refuses
    to decorate a function with cache=True there, which made importing the loader fail. Simulated by leaving
    numba only the locator for zip imports. The loader's reader and decode compile there as well."""
    code = ("import numpy as np; from pipeline.crop_resize import RandomResizedCropDecoder, area_shrink; "
            "from ffcv.memory_managers.os_cache import OSCacheManager; from ffcv.pipeline.compiler import Compiler; "
            "from ffcv.reader import Reader; "
            "out = np.empty((5, 5, 3), np.uint8); area_shrink(np.full((12, 13, 3), 7, np.uint8), 0, 12, 0, 13, out); "
            f"read = OSCacheManager(Reader({str(tiny_betons / 'val.beton')!r})).compile_reader(); "
            "decoder = RandomResizedCropDecoder((8, 8)); decoder.memory_read = read; "
            "decode = Compiler.compile(decoder.generate_code()); "
            "print(int(out.min()), int(out.max()), type(read._cache).__name__, len(read.signatures), "
            "type(decode._cache).__name__)")
    done = run_script(["-c", code], timeout=120, env={**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["7", "7", "NullCache", "1", "NullCache"]


def compiled_decoders(loader: Loader) -> list:
    """The dispatchers ffcv compiled a loader's decoders into (its first stage's)."""
    first_stage = loader.code[0][0][0]
    return [value for name, value in first_stage.__globals__.items() if name.startswith("code_")]


def test_a_loaders_decoders_load_from_numbas_disk_cache_and_each_seed_has_its_own(tiny_betons):
    """ffcv compiled each loader's decoders afresh: 1 s of a training loader's first batch, 0.7 s of a val loader's,
    0.2 s for each label decoder, in every process. They load from numba's disk cache now; the cache is keyed on
    the decoder's settings, the crops' seed among them, so a loader of another seed draws other crops."""
    def load(seed: int):
        pipelines = {"image": [RandomResizedCropDecoder((24, 24), seed=seed), ToTensor()],
                     "label": [LabelDecoder(), ToTensor()]}
        loader = Loader(str(tiny_betons / "val.beton"), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL,
                        drop_last=False, pipelines=pipelines)
        images = np.concatenate([batch.numpy().copy() for batch, _ in loader])
        return images, compiled_decoders(loader)

    first, _ = load(seed=0)  # compiled and written, or loaded
    again, decoders = load(seed=0)
    assert sorted(decoder.py_func.__qualname__.split(".")[0] for decoder in decoders) == ["BasicDecoder", "_FastResize"]
    for decoder in decoders:
        assert sum(decoder.stats.cache_hits.values()) == 1 and not decoder.stats.cache_misses, decoder
    assert np.array_equal(first, again)
    assert not np.array_equal(first, load(seed=1)[0])


def test_loaders_of_other_storage_settings_run_one_after_another_in_a_process(tiny_betons):
    """A center-crop loader without os_cache, then a training loader with it, in a fresh process: the second
    hung for good (its thread died compiling a JPEG decoder shared with the first, whose arrays were typed
    otherwise), which pytest-xdist met only when two such tests fell to one worker."""
    code = f"""
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import ToTensor
from pipeline.crop_resize import CenterCropDecoder
from pipeline.data import LoaderSettings, train_loader
beton = "{tiny_betons / 'val.beton'}"
first = Loader(beton, batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL, os_cache=False, drop_last=False,
               pipelines={{"image": [CenterCropDecoder((40, 40), 0.875), ToTensor()], "label": [IntDecoder(), ToTensor()]}})
print(sum(len(images) for images, _ in first))
second = train_loader(beton, LoaderSettings(16, 2, True, 2, 0), 32, torch.device("cpu"), False)
print(sum(len(images) for images, _ in second))
"""
    done = run_script(["-c", code], timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["49", "48"]


def test_the_jpeg_decode_and_the_crop_resize_load_from_numbas_disk_cache():
    """They called ffcv's C code through ctypes, whose address numba writes into the machine code: numba could not
    cache them, and every process compiled them in its first batch (a tiny run's loaders compiled 3.5 s, now 2.3 s).
    They call it by a symbol's name now: a dispatcher made afresh, as a new process makes it, loads them from the
    disk cache."""
    image = photo_like(30, 40, seed=5)
    jpeg = np.frombuffer(cv2.imencode(".jpg", image)[1].tobytes(), np.uint8)
    with_ffcv = np.empty(30 * 40 * 3, np.uint8)
    assert imdecode(jpeg, with_ffcv, 30, 40, 30, 40, 0, 0, 1, 1, False, False) == 0
    size = np.uint32(30), np.uint32(40)
    whole = (0, 30, 0, 40, np.empty((15, 20, 3), np.uint8))  # halves: OpenCV's own resize, called by symbol
    returned = []
    for function, arguments in ((image_pixels, (jpeg, True, *size)), (crop_resize.py_func, (image, *whole))):
        cached_njit(function)(*arguments)  # compiled, or loaded, and on disk either way
        fresh = cached_njit(function)
        returned.append(fresh(*arguments))
        assert list(fresh.stats.cache_hits.values()) == [1] and not fresh.stats.cache_misses, function.__name__
    assert np.array_equal(returned[0], with_ffcv.reshape(30, 40, 3))
    assert np.array_equal(whole[-1], opencv(image, whole[:4], (15, 20)))
