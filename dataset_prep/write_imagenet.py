"""Turn ImageNet into FFCV .beton files; with no arguments, build the real-photo sample set.

    python dataset_prep/write_imagenet.py                                   # data/sample/{train,val}.beton
    python dataset_prep/write_imagenet.py --data-dir /imagenet --out-dir /betons --max-res 500

--data-dir holds an ImageFolder, the official ILSVRC2012 tars (read in place) or Kaggle's layout
(dataset_prep/imagenet_layouts.py). Options follow ffcv-imagenet's writer. Unreadable files are skipped and
listed in `<out>/<split>_skipped.txt`.
"""
import argparse
import collections
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from pipeline.gc_freeze import imports_frozen

with imports_frozen(as_a_script=__name__ == "__main__"):  # seconds of its start and exit (gc_freeze.py)
    from dataset_prep.archive import ImageSource
    from dataset_prep.beton import WRITE_MODES, WriteSettings, class_difference, verify_beton, write_beton
    from dataset_prep.beton_size import PlannedBeton, check_room, estimate_beton, jpeg_bytes_per_pixel
    from dataset_prep.class_subset import choose_classes, keep_classes
    from dataset_prep.image_folder import Split, UsageError, printable, scan, skip_kind
    from dataset_prep.imagenet_layouts import Layout, detect_layout, list_split
    from dataset_prep.sample_set import TRAIN_PER_CLASS, VAL_PER_CLASS, build_sample_folder, sample_folder_counts
    from pipeline.atomic import remove_stale_temporaries, write_text_atomic
    from pipeline.errors import UserError, report_user_error
    from pipeline.processes import children_die_with_this_process, children_leave_ctrl_c_to_this_process
    from pipeline.termination import report_stop, sigterm_as_ctrl_c

SAMPLE_ROOT = Path("data/sample")
SAMPLE_MAX_RES = 256
# ffcv's writer processes lay images out in the order they finish, and the loader's QUASI_RANDOM order follows
# the file's pages: with several, a rebuilt sample set trained in another order and moved README's demo table
# (gap 93.60 -> 91.20). One process writes the same file every time (~10 s more for the sample set).
SAMPLE_WRITER_WORKERS = 1


def parse_args(argv: List[str]) -> argparse.Namespace:
    defaults = WriteSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="ImageNet as you have it: an ImageFolder (train/, val/), "
                        "the folder of the official ILSVRC2012 tars and devkit, or Kaggle's (ILSVRC/, "
                        "LOC_*.csv/txt); omit to build the sample set from photos bundled with scikit-image")
    parser.add_argument("--out-dir", type=Path, help="where the betons go (default: --data-dir's parent "
                        f"for real data, {SAMPLE_ROOT} for the sample set)")
    parser.add_argument("--split", choices=("train", "val", "both"), default="both")
    parser.add_argument("--max-res", type=int, help=f"longest side stored, px (default {defaults.max_res}; "
                        f"{SAMPLE_MAX_RES} for the sample set, whose training runs at low resolution)")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument("--compress-prob", type=float, help="share of images stored as JPEG, with --write-mode "
                        f"proportion (default {defaults.compress_prob})")
    parser.add_argument("--write-mode", choices=WRITE_MODES, default=defaults.write_mode,
                        help="proportion: --compress-prob of the images as JPEG, the rest raw; smart: JPEG for an "
                             "image whose raw pixels take more than --smart-threshold bytes, raw for the others")
    parser.add_argument("--smart-threshold", type=int, help=f"bytes, with --write-mode smart (default "
                        f"{defaults.smart_threshold:,}: a 256 x 256 image's raw pixels)")
    parser.add_argument("--subset", type=int, help="keep the first N images of every class")
    parser.add_argument("--classes", metavar="N|FILE", help="keep N classes spread evenly over the sorted class "
                        "list (100: an ImageNet-100-sized set, a tenth of the time per run), or the classes "
                        "(WNIDs) FILE lists, one per line; labelled 0..N-1")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="processes that scan and write (the writer's lay images out in the order they "
                             "finish: 1 gives the same file at every build; the sample set's betons always are)")
    parser.add_argument("--chunk-size", type=int, default=defaults.chunk_size)
    parser.add_argument("--exif-transpose", action="store_true",
                        help="rotate images as their EXIF orientation says (off: stored as torchvision's loader "
                             "reads them, a phone photo taken upright may lie sideways)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing betons")
    parser.add_argument("--verify", action="store_true", help="reopen each beton and check count and labels")
    parser.add_argument("--sample-train", type=int, help=f"sample set: train images per class (default "
                        f"{TRAIN_PER_CLASS}; a set built before is used as it is)")
    parser.add_argument("--sample-val", type=int, help=f"sample set: val images per class (default {VAL_PER_CLASS})")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    checks = [
        (args.max_res >= 32, f"--max-res {args.max_res}: must be at least 32"),
        (1 <= args.jpeg_quality <= 100, f"--jpeg-quality {args.jpeg_quality}: must be in 1..100"),
        (args.compress_prob is None or 0.0 <= args.compress_prob <= 1.0,
         f"--compress-prob {args.compress_prob}: must be in [0, 1]"),
        (args.compress_prob is None or args.write_mode == "proportion",
         f"--compress-prob applies to --write-mode proportion, not {args.write_mode}; drop it or pass --write-mode "
         "proportion"),
        (args.workers >= 1, f"--workers {args.workers}: must be at least 1"),
        (args.chunk_size >= 1, f"--chunk-size {args.chunk_size}: must be at least 1"),
        (args.subset is None or args.subset >= 1, f"--subset {args.subset}: must be at least 1"),
        (args.sample_train is None or args.sample_train >= 1,
         f"--sample-train {args.sample_train}: must be at least 1"),
        (args.sample_val is None or args.sample_val >= 1, f"--sample-val {args.sample_val}: must be at least 1"),
        (args.smart_threshold is None or args.write_mode == "smart",
         f"--smart-threshold applies to --write-mode smart, not {args.write_mode}; drop it or pass --write-mode smart"),
        (args.smart_threshold is None or args.smart_threshold >= 0,
         f"--smart-threshold {args.smart_threshold}: must be at least 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def make_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} (--out-dir) is a file; give a folder for the betons")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {out_dir} (--out-dir): {error.strerror or error}; choose a writable "
                         "folder") from None


def prepare_sample_folder(images: Path, train_per_class: Optional[int], val_per_class: Optional[int],
                          workers: int) -> None:
    """The sample photos at `images`: built (by `workers` processes) when absent, else used as they are, unless
    --sample-train or --sample-val ask for another size (they were ignored without a word)."""
    if not (images / "train").is_dir():
        counts = build_sample_folder(images, train_per_class or TRAIN_PER_CLASS, val_per_class or VAL_PER_CLASS,
                                     workers=workers)
        print(f"sample set: {counts['train']} train and {counts['val']} val photos in {images}")
        return
    have = sample_folder_counts(images)
    asked = {"train": train_per_class, "val": val_per_class}
    if any(asked[split] not in (None, have[split]) for split in have):
        raise UsageError(f"{images} holds a sample set of {have['train']} train and {have['val']} val photos per "
                         f"class, not the size asked for (--sample-train/--sample-val); delete {images} to build "
                         "it again at that size")
    print(f"sample set: the {have['train']} train and {have['val']} val photos per class already in {images}")


def skipped_summary(skipped) -> str:
    """`3 skipped (2 corrupt, 1 empty)`: the count, then by kind."""
    if not skipped:
        return "0 skipped"
    kinds = collections.Counter(skip_kind(reason) for _, reason in skipped)
    return f"{len(skipped)} skipped ({', '.join(f'{count} {kind}' for kind, count in kinds.most_common())})"


def list_splits(layout: Layout, names: List[str], subset: Optional[int],
                classes: Optional[str] = None) -> Dict[str, Split]:
    """Every split to write, listed and checked before any is written: a val split that cannot be labelled or
    has other classes is refused before the hours a train write takes, not after. Val is listed first: listing
    the official train tar reads 1.28 M headers, which a missing val tar or devkit need not wait for. `classes`:
    --classes (class_subset.py), applied after the check."""
    listed = {name: list_split(layout, name, subset) for name in sorted(names, key=lambda name: name != "val")}
    splits = {name: listed[name] for name in names}  # written in the order asked
    if len(splits) == 2 and splits["val"].classes != splits["train"].classes:
        val, train = splits["val"], splits["train"]
        raise UsageError(f"{val.root} and {train.root} have different classes "
                         f"({class_difference(val.classes, train.classes)}); both splits need the same classes")
    if classes is not None:
        every = next(iter(splits.values())).classes
        kept = choose_classes(every, classes)
        print(f"--classes {classes}: {len(kept)} of the {len(every)} classes kept ({', '.join(kept[:3])}"
              f"{', …' if len(kept) > 3 else ''}), labelled 0..{len(kept) - 1}")
        splits = {name: keep_classes(split, kept) for name, split in splits.items()}
    return splits


@dataclass(frozen=True)
class PlannedSplit:
    """A split scanned, with what its beton will take: every split asked for is planned before the first is
    written, so that a disk without room for all of them is refused before any write."""
    name: str
    split: Split
    good: List[Tuple[ImageSource, int]]
    skipped: List[Tuple[str, str]]
    report: Path  # where the skipped files are listed
    settings: WriteSettings
    beton: PlannedBeton


def plan_split(split_name: str, split: Split, out_dir: Path, args: argparse.Namespace,
               writer_workers: int) -> PlannedSplit:
    """Scan (by --workers processes) one split listed by list_splits and estimate its beton."""
    scanned = scan(split.files, args.workers, f"{split_name} scan", args.exif_transpose)
    good, skipped = scanned.good, list(split.skipped) + scanned.skipped
    report = out_dir / f"{split_name}_skipped.txt"
    if skipped:
        write_text_atomic(report, "".join(f"{printable(path)}\t{reason}\n" for path, reason in skipped))
    else:
        report.unlink(missing_ok=True)
    if not good:
        raise UsageError(f"{split.root}: none of the {len(split.files)} files could be decoded (see {report})")
    given = {"compress_prob": args.compress_prob, "smart_threshold": args.smart_threshold}  # of one mode each
    settings = WriteSettings(max_res=args.max_res, jpeg_quality=args.jpeg_quality, write_mode=args.write_mode,
                             chunk_size=args.chunk_size, workers=writer_workers, exif_transpose=args.exif_transpose,
                             **{name: value for name, value in given.items() if value is not None})
    per_pixel = jpeg_bytes_per_pixel(good, settings)
    beton = PlannedBeton(out_dir / f"{split_name}.beton", estimate_beton(scanned.shapes, settings, per_pixel),
                         lambda: estimate_beton(scanned.shapes, replace(settings, write_mode="jpg"), per_pixel))
    return PlannedSplit(split_name, split, good, skipped, report, settings, beton)


def write_split(plan: PlannedSplit, kind: str, verify: bool) -> None:
    """Write (by the plan's writer processes) and (optionally) verify one planned split; `kind` is the layout's."""
    split, out, good, skipped = plan.split, plan.beton.out, plan.good, plan.skipped
    print(f"{plan.name}: writing {out}, {plan.beton.estimate.describe()}", flush=True)
    started = time.perf_counter()
    write_beton(good, split.classes, out, plan.settings, f"{kind}: {split.root.resolve()}", len(skipped),
                split.class_names)
    seconds = time.perf_counter() - started
    print(f"{plan.name}: {len(good)} written, {skipped_summary(skipped)}, {len(split.files)} found"
          + (f" ({split.nested} in subfolders of class folders)" if split.nested else "")
          + f" -> {out} ({len(good) / seconds:.0f} img/s)"
          + (f"; skipped files listed in {plan.report}" if skipped else ""))
    if verify:
        problems = verify_beton(out, [label for _, label in good], len(split.classes))
        if problems:
            raise RuntimeError("; ".join(problems))
        print(f"{plan.name}: verified {out} (count and label histogram match the source)")


def interrupted_advice(splits: List[str], written: List[str]) -> str:
    """What Ctrl-C or SIGTERM kept (betons are renamed into place only when whole, so no half-written one is left) and
    the command that goes on."""
    rest = [split for split in splits if split not in written]
    if not written:
        return "no beton was written (nothing half-written is left); the same command starts again"
    return (f"{', '.join(f'{split}.beton' for split in written)} kept, nothing half-written left; add "
            f"--split {rest[0]} to write the rest")


@sigterm_as_ctrl_c()
def main(argv: List[str]) -> int:
    args = parse_args(argv)
    written: List[str] = []
    try:
        if args.max_res is None:
            args.max_res = WriteSettings().max_res if args.data_dir else SAMPLE_MAX_RES
        check_args(args)
        if args.data_dir is None:
            out_dir = args.out_dir or SAMPLE_ROOT
            data_dir = out_dir / "images"
            layout = Layout("imagefolder", data_dir)  # built below if it is not there yet
        else:
            data_dir = args.data_dir
            out_dir = args.out_dir or data_dir.parent
            layout = detect_layout(data_dir)
            print(f"{data_dir}: found {layout.describe()}")
        splits = ["train", "val"] if args.split == "both" else [args.split]
        existing = [str(out_dir / f"{s}.beton") for s in splits if (out_dir / f"{s}.beton").exists()]
        if existing and not args.overwrite:
            raise UsageError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; pass "
                             f"--overwrite to replace {'it' if len(existing) == 1 else 'them'}")
        make_out_dir(out_dir)
        children_die_with_this_process()  # scan and writer workers stop when this process is killed
        children_leave_ctrl_c_to_this_process()
        removed = remove_stale_temporaries(out_dir)
        if removed:
            print(f"removed {len(removed)} temporary file(s) left by killed writers: "
                  f"{', '.join(path.name for path in removed)}")
        if args.data_dir is None:
            prepare_sample_folder(data_dir, args.sample_train, args.sample_val, args.workers)
        writer_workers = SAMPLE_WRITER_WORKERS if args.data_dir is None else args.workers
        plans = [plan_split(name, split, out_dir, args, writer_workers)
                 for name, split in list_splits(layout, splits, args.subset, args.classes).items()]
        check_room([plan.beton for plan in plans])
        for plan in plans:
            write_split(plan, layout.kind, args.verify)
            written.append(plan.name)
    except UserError as error:
        return report_user_error("write_imagenet.py", error)
    except KeyboardInterrupt as interrupt:
        traceback.clear_frames(interrupt.__traceback__)  # ffcv's progress bar prints when collected: before this
        return report_stop("write_imagenet.py", interrupt, interrupted_advice(splits, written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
