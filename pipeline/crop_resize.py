"""ffcv's crop-and-resize image decoders with their shrink computed in numba: the same pixels, 3-4x faster shrinks.

ffcv resizes every crop with OpenCV's INTER_AREA. Where a crop shrinks by a non-integer factor (most
random-resized crops, every 224/256 center crop) OpenCV runs its generic area resampler, a scalar loop over a
table of (source, destination, weight) triples: 0.45-0.8 ms per 176 px crop on one core, more than the JPEG
decode itself (measured on the bench photos: 0.37 ms resize and 0.22 ms decode per image on average). The box
filter is separable, so here it runs as a vertical pass over whole rows and a horizontal pass that walks each
row once, with OpenCV's own weights in fp32 and its round-half-even: 0.12-0.17 ms for the same crops, and
OpenCV's output but for rounding ties, which the other order of the sums can tip by one level (16 bytes in
100,710 in the tests). Crops that grow in either direction, or shrink by whole factors in both, still go to
OpenCV, whose paths for those are fast. The decoders also decode each JPEG into a buffer of its own size instead of
ffcv's scratch for every image of every batch in flight (`_FastResize.declare_state_and_memory`), and the random
crops follow the loader's seed (`crop_seed`): ffcv draws them from numba's per-thread generators, seeded from the OS,
so two runs of one seed (two arms of an ablation) trained on other crops. They call ffcv's C code (libjpeg-turbo,
OpenCV) by a symbol's name rather than through ctypes, so that numba loads them from its disk cache.
"""
import ctypes
import math

import llvmlite.binding as llvm
import numpy as np

import pipeline.ffcv_startup  # noqa: F401  (before ffcv: see its docstring)
from ffcv import libffcv
from ffcv.fields.rgb_image import (IMAGE_MODES, CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder,
                                   ResizedCropRGBImageDecoder)
from ffcv.pipeline.compiler import Compiler
from numba import types

from pipeline.numba_cache import cached_njit, jitable

# OpenCV leaves out a source pixel's part of a cell when it is under this fraction of a pixel
_SLIVER = 1e-3


def _by_symbol(name: str, signature) -> types.ExternalFunction:
    """ffcv's C function `name`, called by a symbol's name: numba caches code that calls a named symbol, but not
    code that calls through ctypes, whose address (another in every process) it writes into the machine code."""
    symbol = f"ssenet_ffcv_{name}"
    llvm.add_symbol(symbol, ctypes.cast(getattr(libffcv.lib, name), ctypes.c_void_p).value)
    return types.ExternalFunction(symbol, signature)


# what ffcv's resize_crop and imdecode call: OpenCV's cv::resize (INTER_AREA) and libjpeg-turbo's decode
_OPENCV_RESIZE = _by_symbol("resize", types.void(*11 * [types.int64]))
_DECODE_JPEG = _by_symbol("imdecode", types.int32(types.intp, types.uint64, types.uint32, types.uint32, types.intp,
                                                  *6 * [types.uint32], types.uint8, types.uint8))


def _compiled(**options):
    """Decorates with `cached_njit`: a new process loads these from numba's disk cache (~1.5 s of compiling less)."""
    return lambda function: cached_njit(function, **options)


@_compiled()
def _gather_taps(source: int, target: int):
    """OpenCV's INTER_AREA weights for shrinking `source` pixels to `target` cells: for each cell, its source
    pixels (index, weight), at most int(scale) + 2 of them, padded with weight 0."""
    scale = 1.0 / (target / source)  # as OpenCV derives it from the inverse scale
    index = np.zeros((target, int(scale) + 2), np.int64)
    weight = np.zeros((target, int(scale) + 2), np.float32)
    for cell in range(target):
        start = cell * scale
        stop = start + scale
        cell_width = min(scale, source - start)
        last = min(math.floor(stop), source - 1)
        first = min(math.ceil(start), last)
        taps = 0
        if first - start > _SLIVER:
            index[cell, taps], weight[cell, taps] = first - 1, np.float32((first - start) / cell_width)
            taps += 1
        for pixel in range(first, last):
            index[cell, taps], weight[cell, taps] = pixel, np.float32(1.0 / cell_width)
            taps += 1
        if stop - last > _SLIVER:
            index[cell, taps] = last
            weight[cell, taps] = np.float32(min(min(stop - last, 1.0), cell_width) / cell_width)
    return index, weight


@_compiled()
def _walk_taps(source: int, target: int):
    """The same weights per source pixel, for one walk along a row: its weight in the cell being summed, its
    weight in the next cell (a pixel straddling a cell border), and whether the current cell ends with it."""
    index, weight = _gather_taps(source, target)
    own, carried = np.zeros(source, np.float32), np.zeros(source, np.float32)
    ends = np.zeros(source, np.bool_)
    for cell in range(target):
        last = 0
        for tap in range(index.shape[1]):
            if weight[cell, tap] != 0:  # a real tap: its weight is never 0
                pixel = index[cell, tap]
                if own[pixel] != 0:  # the pixel's share of the cell before: this is its share of the next
                    carried[pixel] = weight[cell, tap]
                else:
                    own[pixel] = weight[cell, tap]
                last = pixel
        ends[last] = True
    return own, carried, ends


@_compiled()
def _to_uint8(value):
    """OpenCV's saturate_cast<uchar>(float): round half to even, clamp to 0..255."""
    return np.uint8(min(max(np.rint(value), 0.0), 255.0))


@_compiled(fastmath=True)
def area_shrink(image, top: int, bottom: int, left: int, right: int, destination) -> None:
    """destination (H, W, 3 uint8) = image[top:bottom, left:right] shrunk by INTER_AREA's box filter; the crop
    is at least H x W."""
    height, width = destination.shape[0], destination.shape[1]
    row_index, row_weight = _gather_taps(bottom - top, height)
    own, carried, ends = _walk_taps(right - left, width)
    values = (right - left) * 3
    rows = np.empty(values, np.float32)
    for y in range(height):
        rows[:] = 0
        for tap in range(row_index.shape[1]):
            weight = row_weight[y, tap]
            if weight == 0:  # the padding after this row's taps
                break
            source = image[top + row_index[y, tap], left:right].reshape(values)
            for at in range(values):
                rows[at] += weight * np.float32(source[at])
        line = destination[y]
        red = green = blue = np.float32(0)
        cell = 0
        for x in range(right - left):
            weight = own[x]
            r, g, b = rows[3 * x], rows[3 * x + 1], rows[3 * x + 2]
            red += weight * r
            green += weight * g
            blue += weight * b
            if ends[x]:
                line[cell, 0], line[cell, 1], line[cell, 2] = _to_uint8(red), _to_uint8(green), _to_uint8(blue)
                cell += 1
                weight = carried[x]
                red, green, blue = weight * r, weight * g, weight * b


@_compiled()
def crop_seed(seed: int, batch_first: int, sample: int) -> np.uint32:
    """The seed of one image's random crop: its id, the id of the first image of its batch and the loader's seed,
    mixed by splitmix64's finaliser. The order of an epoch follows the loader's seed and the epoch, so the crops do
    too, and they change every epoch; the thread that decodes the image does not matter."""
    mixed = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(batch_first) * np.uint64(0xD1B54A32D192ED03)
             + np.uint64(sample))
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.uint32((mixed ^ (mixed >> np.uint64(31))) & np.uint64(0xFFFFFFFF))


@_compiled()
def opencv_resize(image, top: int, bottom: int, left: int, right: int, destination) -> None:
    """ffcv's resize_crop: destination (H, W, 3 uint8) = image[top:bottom, left:right] resized by OpenCV's
    INTER_AREA. Both arrays are C-contiguous and their callers hold them."""
    _OPENCV_RESIZE(0, image.ctypes.data, image.shape[0], image.shape[1], top, bottom, left, right,
                   destination.ctypes.data, destination.shape[0], destination.shape[1])


@_compiled()
def crop_resize(image, top: int, bottom: int, left: int, right: int, destination) -> None:
    """ffcv's resize_crop (OpenCV INTER_AREA), with non-integer shrinks done by area_shrink."""
    height, width = destination.shape[0], destination.shape[1]
    rows, columns = bottom - top, right - left
    shrinks = rows >= height and columns >= width
    whole_factors = rows % height == 0 and columns % width == 0
    if shrinks and not whole_factors:
        area_shrink(image, top, bottom, left, right, destination)
    else:
        opencv_resize(image, top, bottom, left, right, destination)


@jitable
def image_pixels(data, jpeg: bool, height, width):
    """An image's (height, width, 3) pixels: its JPEG decoded into a buffer of its own size, or its raw bytes."""
    if not jpeg:
        return data.reshape(height, width, 3)
    pixels = np.empty(3 * np.int64(height) * np.int64(width), np.uint8)
    _DECODE_JPEG(data.ctypes.data, data.size, height, width, pixels.ctypes.data, height, width, 0, 0, 1, 1, 0, 0)
    return pixels.reshape(height, width, 3)


class _FastResize(ResizedCropRGBImageDecoder):
    """The decode loop of ffcv's crop decoders with crop_resize in place of OpenCV's resize, each JPEG decoded
    into a buffer of its own size, and (with a `seed`) each crop drawn from a generator seeded by crop_seed."""
    seed = None

    def declare_state_and_memory(self, previous_state):
        """Only the output batch. ffcv also reserves the largest image's pixels for every image of every batch in
        flight (batches_ahead + 2 batches: 1.9 GB at batch 512 for 500 px betons), allocated again for every
        epoch and pinned where CUDA is; here the thread that decodes a JPEG allocates its pixels, which the
        allocator hands back warm from the image before."""
        state, (output, _) = super().declare_state_and_memory(previous_state)
        return state, output

    def generate_code(self):
        # decode loads from numba's disk cache (ffcv_startup): its closure holds values and plain functions, which
        # numba compiles into it, not dispatchers (see numba_cache.jitable). The reader is the memory manager's
        # (os_cache on or off), the crop generator ffcv's, with Compiler.compile's options.
        read = jitable(getattr(self.memory_read, "py_func", self.memory_read))
        choose_crop = jitable(self.get_crop_generator, fastmath=True, error_model="numpy")
        images = Compiler.get_iterator()  # prange or range: tells a parallel decode's cache entry from a serial one
        jpeg = IMAGE_MODES["jpg"]
        scale = np.array(self.scale) if isinstance(self.scale, tuple) else self.scale
        ratio = np.array(self.ratio) if isinstance(self.ratio, tuple) else self.ratio
        seeded, seed = self.seed is not None, self.seed or 0  # a cache entry per seed

        def decode(batch_indices, destination, metadata, storage_state):
            for at in images(len(batch_indices)):
                field = metadata[batch_indices[at]]
                data = read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                image = image_pixels(data, field["mode"] == jpeg, height, width)
                if seeded:  # numba's np.random: this thread's generator, which choose_crop draws from
                    np.random.seed(crop_seed(seed, batch_indices[0], batch_indices[at]))
                top, left, rows, columns = choose_crop(height, width, scale, ratio)
                crop_resize(image, top, top + rows, left, left + columns, destination[at])
            return destination[:len(batch_indices)]

        decode.is_parallel = decode.disk_cache = True
        return decode


class RandomResizedCropDecoder(_FastResize, RandomResizedCropRGBImageDecoder):
    """ffcv's RandomResizedCropRGBImageDecoder (crops from the same distribution, same pixels for a crop), faster,
    with its crops following `seed`."""

    def __init__(self, output_size, scale=(0.08, 1.0), ratio=(0.75, 4 / 3), seed: int = 0):
        super().__init__(output_size, scale, ratio)
        self.seed = seed


class CenterCropDecoder(_FastResize, CenterCropRGBImageDecoder):
    """ffcv's CenterCropRGBImageDecoder (same crop, same pixels), faster."""
