"""Which classes a smaller ImageNet keeps (`write_imagenet.py --classes N|FILE`).

An ablation on 100 classes (126 k training images) runs in a tenth of the time of one on 1,000, which is how
many papers answer a question of this kind first (ImageNet-100). `N` takes the classes spread evenly over the
sorted class list (every tenth WNID for 100 of 1,000): the first 100 in WNID order are all animals, most of
them fish, birds and reptiles. `FILE` lists a published subset's WNIDs, one per line. Either way the choice
depends only on the class list, so the train and val betons, written together or apart, keep the same classes,
labelled 0..N-1 in their sorted order.
"""
import os
from dataclasses import replace
from pathlib import Path
from typing import Tuple

from dataset_prep.image_folder import Split, UsageError, printable


def choose_classes(classes: Tuple[str, ...], spec: str) -> Tuple[str, ...]:
    """The classes `spec` keeps of `classes` (sorted), in their order: a count, or a file of class names."""
    if spec.strip().isdigit():
        count = int(spec)
        if not 1 <= count <= len(classes):
            raise UsageError(f"--classes {spec}: the data has {len(classes)} classes; keep 1 to {len(classes)}")
        return tuple(classes[index * len(classes) // count] for index in range(count))
    path = Path(spec)
    try:
        names = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--classes {spec}: neither a number of classes nor a readable file of class names "
                         f"({getattr(error, 'strerror', None) or error})") from None
    names = [name for name in names if name and not name.startswith("#")]
    unknown = [name for name in names if name not in classes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    problem = ("lists no class" if not names else
               f"lists {len(unknown)} class(es) the data does not have (first: {unknown[0]!r}; the data's are "
               f"folder names or WNIDs such as {classes[0]!r})" if unknown else
               f"lists {repeated[0]!r} more than once" if repeated else None)
    if problem:
        raise UsageError(f"--classes {printable(spec)} {problem}")
    wanted = set(names)
    return tuple(name for name in classes if name in wanted)


def keep_classes(split: Split, kept: Tuple[str, ...]) -> Split:
    """`split` with only the images of `kept` classes, labelled by their place in `kept`; what listing skipped
    in the classes left out is left out too."""
    if kept == split.classes:
        return split
    new_label = {split.classes.index(name): label for label, name in enumerate(kept)}
    files = tuple((source, new_label[label]) for source, label in split.files if label in new_label)
    dropped = set(split.classes) - set(kept)
    skipped = tuple((path, reason) for path, reason in split.skipped if not dropped & _folders(path))
    nested = split.nested and sum(1 for source, label in files if isinstance(source, str)
                                  and os.path.dirname(source) != str(split.root / kept[label]))
    names = dict(zip(split.classes, split.class_names))
    return replace(split, classes=kept, files=files, skipped=skipped, nested=nested,
                   class_names=tuple(names[name] for name in kept) if names else ())


def _folders(path: str) -> set:
    """The folder names in a listed path (a class tar's `n01440764.tar` as `n01440764`)."""
    return {part[:-len(".tar")] if part.endswith(".tar") else part for part in Path(str(path)).parts}
