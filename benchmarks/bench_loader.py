"""Loader throughput: FFCV (several storage and loader settings) vs torchvision ImageFolder + PIL + DataLoader.

    python benchmarks/bench_loader.py [--per-class 200] [--res 176] [--batch 256] [--workers N]
    python benchmarks/bench_loader.py --quick     # the default storage vs torchvision (the target's pair), and
                                                  # the same loader with ffcv's own decoder (OpenCV's resize)

Both sides read the same real-photo JPEGs (the sample-set generator: 300-500 px, realistic ImageNet sizes),
do the same random-resized crop at --res and a flip, and deliver uint8 batches of the same size with the same
number of workers. The first epoch (ffcv's JIT compile, torchvision's worker start) is not timed. Resident
memory is the peak RSS of the measuring process (ffcv: threads in one process; torchvision: the main process
plus its worker processes); each configuration runs in a fresh process.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import List, Optional

from pipeline.gc_freeze import imports_frozen

with imports_frozen(as_a_script=__name__ == "__main__"):  # as train.py runs (pipeline/gc_freeze.py)
    import psutil
    import torch

    import pipeline.ffcv_startup  # noqa: F401  (before ffcv: see its docstring)
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from torchvision import datasets, transforms

    from cli import at_least  # a sibling module: benchmarks run as scripts

    from dataset_prep.beton import WriteSettings, write_beton
    from dataset_prep.sample_set import photo_set_files
    from pipeline.cores import usable_cores
    from pipeline.crop_resize import RandomResizedCropDecoder
    from pipeline.data import LoaderSettings, train_loader


def resident_mb(process: psutil.Process, children: bool) -> float:
    processes = [process] + (process.children(recursive=True) if children else [])
    return sum(p.memory_info().rss for p in processes if p.is_running()) / 2**20


STARTED = time.perf_counter()  # in a measuring process: its own start
CLOCK = "s"


def progress(message: str) -> None:
    """A line with the seconds since start: a run cut off by its time cap shows which phase it was in."""
    print(f"  [{time.perf_counter() - STARTED:6.1f} {CLOCK}] {message}", flush=True)


def time_epochs(make_iterator, epochs: int, children: bool):
    """(median images/s over the timed epochs, peak RSS MB) after one untimed warm-up epoch."""
    me = psutil.Process()
    progress("warm-up epoch (ffcv: JIT compile; torchvision: worker start)")
    for _ in make_iterator():
        pass
    speeds, peak = [], 0.0
    for epoch in range(epochs):
        images, started = 0, time.perf_counter()
        for batch_index, (batch, _) in enumerate(make_iterator()):
            images += batch.shape[0]
            if batch_index % 4 == 0:
                peak = max(peak, resident_mb(me, children))
        speeds.append(images / (time.perf_counter() - started))
        progress(f"timed epoch {epoch + 1}: {speeds[-1]:.0f} img/s")
    return statistics.median(speeds), peak


def measure_torchvision(folder: Path, res: int, batch: int, workers: int, epochs: int):
    transform = transforms.Compose([transforms.RandomResizedCrop(res), transforms.RandomHorizontalFlip(),
                                    transforms.PILToTensor()])
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    # fork, as a plain script on Linux gets: this process was spawned, and spawned workers would each import
    # torch again (seconds of start-up on 16 cores, untimed but inside the step's time cap)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=True, multiprocessing_context="fork")
    return time_epochs(lambda: iter(loader), epochs, children=True)


def ffcv_own_decoder(output_size, seed: int):
    """ffcv's RandomResizedCropRGBImageDecoder, which draws its crops from numba's generators unseeded."""
    return RandomResizedCropRGBImageDecoder(output_size)


def measure_ffcv(beton: str, settings: LoaderSettings, res: int, epochs: int, make_decoder):
    loader = train_loader(beton, settings, res, torch.device("cpu"), False, make_decoder)
    return time_epochs(lambda: iter(loader), epochs, children=False)


def _report_to(queue, function, args) -> None:
    global CLOCK
    CLOCK = "s in its process"
    result = function(*args)
    queue.put(result)
    progress("reported; tearing down")


def in_fresh_process(label: str, time_limit: float, function, *args):
    """Each configuration in its own process (clean RSS, no state carried between loaders), printed as it
    finishes; one that runs past `time_limit` seconds is killed with its workers and gives None."""
    context = multiprocessing.get_context("spawn")  # the process may start its own (DataLoader) workers
    queue = context.Queue()
    process = context.Process(target=_report_to, args=(queue, function, args))
    started = time.perf_counter()
    progress(f"{label}: starting")
    process.start()
    try:
        result = queue.get(timeout=time_limit)
    except Empty:
        result = None
    process.join(timeout=5)  # measured (or out of time): its workers' teardown is not waited for
    if process.is_alive():
        for child in psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]:
            child.kill()
        process.join()
    seconds = time.perf_counter() - started
    print(f"  {label}: " + (f"{result[0]:.0f} img/s ({seconds:.0f} s)" if result else
                            f"did not finish in {time_limit:.0f} s (--time-limit); left out"), flush=True)
    return result


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, checked before anything runs (the device check's commands are tested here)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=at_least(1), default=200, help="images per class (10 classes)")
    parser.add_argument("--res", type=at_least(16), default=176)
    parser.add_argument("--batch", type=at_least(1), default=256)
    parser.add_argument("--workers", type=at_least(1), default=usable_cores())
    parser.add_argument("--epochs", type=at_least(1), default=3, help="timed epochs per configuration (median)")
    parser.add_argument("--data", type=Path, default=Path("data/bench_photos"))
    parser.add_argument("--quick", action="store_true",
                        help="only the default storage and loader settings against torchvision, and the same "
                             "with ffcv's own decoder")
    parser.add_argument("--time-limit", type=float, default=600,
                        help="seconds one configuration may take (warm-up and timed epochs) before it is left out")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_arguments()
    files = photo_set_files(args.data, args.per_class, seed=7)
    progress(f"{len(files)} photos ready")
    classes = [str(i) for i in range(10)]
    rows = []

    storage = {
        "500px proportion 0.5 q90 (ImageNet default)": WriteSettings(workers=args.workers),
        "500px all JPEG q90": WriteSettings(write_mode="jpg", workers=args.workers),
        "500px all raw": WriteSettings(write_mode="raw", workers=args.workers),
        "320px proportion 0.5 (decode less)": WriteSettings(max_res=320, workers=args.workers),
    }
    own_decoder = "ffcv's own decoder (OpenCV's resize)"
    loader_variants = {  # applied to the default storage only
        own_decoder: dict(make_decoder=ffcv_own_decoder),
        "os_cache off": dict(os_cache=False),
        "batches_ahead 1": dict(batches_ahead=1),
        "batches_ahead 6": dict(batches_ahead=6),
        f"{max(1, args.workers // 2)} workers": dict(num_workers=max(1, args.workers // 2)),
    }
    if args.quick:
        storage, loader_variants = dict(list(storage.items())[:1]), {own_decoder: loader_variants[own_decoder]}
    with tempfile.TemporaryDirectory(dir=args.data) as folder:
        betons = {label: Path(folder) / f"{index}.beton" for index, label in enumerate(storage)}
        for label, settings in storage.items():
            write_beton(files, classes, betons[label], settings, "bench", 0)
        progress(f"{len(betons)} beton(s) written; flushing dirty pages to disk")
        os.sync()  # the writes' dirty pages would otherwise be flushed during the first measurement
        progress("flushed")
        name = "torchvision ImageFolder+PIL+DataLoader"
        measured = in_fresh_process(name, args.time_limit, measure_torchvision, args.data / "train", args.res,
                                    args.batch, args.workers, args.epochs)
        if measured is None:
            raise SystemExit("bench_loader.py: the torchvision reference did not finish; nothing to compare with")
        rows.append((name, *measured))
        for index, (label, beton) in enumerate(betons.items()):
            size_mb = beton.stat().st_size / 2**20
            variants = {"": {}} | (loader_variants if index == 0 else {})
            for variant, change in variants.items():
                change = dict(change)
                make_decoder = change.pop("make_decoder", RandomResizedCropDecoder)
                loader_args = dict(batch_size=args.batch, num_workers=args.workers, os_cache=True,
                                   batches_ahead=3, seed=0) | change
                name = f"ffcv, {label}" + (f", {variant}" if variant else "") + f" [{size_mb:.0f} MB]"
                measured = in_fresh_process(name, args.time_limit, measure_ffcv, str(beton),
                                            LoaderSettings(**loader_args), args.res, args.epochs, make_decoder)
                if measured is not None:
                    rows.append((name, *measured))

    reference = rows[0][1]
    print(f"\n{len(files)} photos, RRC {args.res} + flip, batch {args.batch}, {args.workers} workers, "
          f"{usable_cores()} cores")
    print(f"{'loader':78s} {'img/s':>7s} {'x tv':>6s} {'RSS MB':>7s}")
    for name, speed, memory in rows:
        print(f"{name:78s} {speed:7.0f} {speed / reference:6.2f} {memory:7.0f}")
    if len(rows) < 2 or not rows[1][0].startswith(f"ffcv, {next(iter(storage))}"):
        raise SystemExit("bench_loader.py: the default ffcv loader did not finish; no speed-up to report")
    default = rows[1][1]
    print(json.dumps({"loader_speedup_vs_torchvision": round(default / reference, 3),
                      "best_speedup_vs_torchvision": round(max(r[1] for r in rows[1:]) / reference, 3),
                      "torchvision_img_s": round(reference), "ffcv_default_img_s": round(default),
                      "cores": usable_cores(), "workers": args.workers, "res": args.res}))


if __name__ == "__main__":
    main()
