"""Beton write throughput on the sample set, next to a plain PIL decode loop over the same files (same run).

    python benchmarks/bench_write.py [--workers N]
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from dataset_prep.beton import WriteSettings, write_beton
from dataset_prep.image_folder import find_split
from dataset_prep.sample_set import build_sample_folder
from dataset_prep.write_imagenet import SAMPLE_MAX_RES, SAMPLE_ROOT


def pil_decode_loop(files) -> float:
    """Images/s of `Image.open(path).convert('RGB')` over the files, one process."""
    started = time.perf_counter()
    for path, _ in files:
        with Image.open(path) as image:
            image.convert("RGB").load()
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    images = SAMPLE_ROOT / "images"
    if not (images / "train").is_dir():
        build_sample_folder(images)
    files = list(find_split(images / "train").files)
    decode = pil_decode_loop(files)
    rows = {}
    for label, settings in {
        f"sample settings ({SAMPLE_MAX_RES} px, proportion 0.5)": WriteSettings(max_res=SAMPLE_MAX_RES,
                                                                               workers=args.workers),
        "ImageNet settings (500 px, proportion 0.5, q90)": WriteSettings(workers=args.workers),
    }.items():
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            write_beton(files, [str(i) for i in range(10)], Path(folder) / "t.beton", settings, "bench", 0)
            rows[label] = len(files) / (time.perf_counter() - started)
    print(f"\n{len(files)} sample-set JPEGs, {args.workers} writer workers, {os.cpu_count()} cores")
    print(f"{'':52s} {'img/s':>8s} {'x PIL loop':>10s}")
    print(f"{'plain PIL decode loop (1 process)':52s} {decode:8.0f} {1.0:10.2f}")
    for label, speed in rows.items():
        print(f"{'ffcv write, ' + label:52s} {speed:8.0f} {speed / decode:10.2f}")
    print(json.dumps({"pil_decode_img_s": round(decode), **{f"write_img_s[{k}]": round(v) for k, v in rows.items()},
                      "write_vs_pil_decode": round(list(rows.values())[0] / decode, 3)}))


if __name__ == "__main__":
    main()
