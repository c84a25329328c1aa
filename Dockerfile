# SsENet-FFCV on NVIDIA GPUs. Build:  docker build -t ssenet-ffcv .
# Train:  docker run --gpus all --ipc=host -v /imagenet:/data -v $PWD/runs:/workspace/runs ssenet-ffcv \
#           torchrun --nproc_per_node=8 pipeline/train.py --cfg recipes/rn50_88ep.yaml --squeeze gmp
# Betons: docker run --ipc=host -v /imagenet:/data ssenet-ffcv \
#           python dataset_prep/write_imagenet.py --data-dir /data/raw --out-dir /data
# The base image carries exactly the torch and torchvision that pyproject.toml pins (a test checks the tag),
# so installing the project downloads no second torch.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

WORKDIR /workspace

# ffcv 1.0.2 compiles against libturbojpeg and OpenCV: the same script `make setup` runs, plus a compiler
COPY scripts/install_system_deps.sh scripts/install_system_deps.sh
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.* \
    && bash scripts/install_system_deps.sh \
    && rm -rf /var/lib/apt/lists/*

# dependencies first (cached while only the code changes), then the project itself
COPY pyproject.toml README.md ./
COPY pipeline/__init__.py pipeline/__init__.py
COPY dataset_prep/__init__.py dataset_prep/__init__.py
RUN pip install -e .

COPY . .
# recipes read data/imagenet/{train,val}.beton: point that at the /data mount
RUN mkdir -p data runs && ln -sfn /data data/imagenet

CMD ["python", "pipeline/train.py", "--help"]
