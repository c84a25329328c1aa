#!/usr/bin/env bash
# Install the system libraries ffcv 1.0.2 compiles against, only when they are missing (idempotent).
# ffcv's build finds libjpeg-turbo and OpenCV through pkg-config: where pkg-config finds both, however they were
# installed (apt, dnf, conda, a cluster's modules), nothing is installed. Else apt installs them; a machine
# without apt, or without root and sudo, gets one line saying what to install, and exit status 2.
set -euo pipefail
found_by_pkg_config() {
    command -v pkg-config >/dev/null && pkg-config --exists libturbojpeg \
        && { pkg-config --exists opencv4 || pkg-config --exists opencv; }
}
found_by_pkg_config && exit 0
packages=(libturbojpeg0-dev libopencv-dev pkg-config)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
needs="ffcv 1.0.2 compiles against libjpeg-turbo and OpenCV, which pkg-config does not find here"
if ! command -v apt-get >/dev/null; then
    echo "install_system_deps.sh: $needs, and this machine has no apt-get to install them: install them with its" \
         "package manager (e.g. dnf install turbojpeg-devel opencv-devel pkgconf-pkg-config) or conda (conda" \
         "install -c conda-forge libjpeg-turbo opencv pkg-config), then run make setup again" >&2
    exit 2
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install_system_deps.sh: $needs, and installing ${missing[*]} with apt-get needs root, which this" \
             "user is not, and there is no sudo: ask an administrator to install them, then run make setup" \
             "again" >&2
        exit 2
    fi
    sudo="sudo"
fi
echo "installing system packages for ffcv: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
