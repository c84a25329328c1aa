"""Train an SE-ResNet on FFCV betons: `python pipeline/train.py --cfg recipes/rn50_88ep.yaml --squeeze gmp`
(or under `torchrun --nproc_per_node=N`). Everything else lives in pipeline/trainer.py."""
import sys

from pipeline.gc_freeze import imports_frozen

with imports_frozen():  # seconds of every process's start and exit (gc_freeze.py)
    from pipeline.trainer import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
