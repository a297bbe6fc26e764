#!/bin/sh
# Install Fashion-MNIST (the embedded default data set) where degl finds it:
#   1. Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist), via apt-get;
#   2. otherwise torchvision's download into data/fashion-mnist (needs internet);
#   3. otherwise stop with a message saying what to do.
set -u
PYTHON=${PYTHON:-python3}
DEBIAN_DIR=/usr/share/datasets/fashion-mnist
LOCAL_DIR=data/fashion-mnist

have() { [ -f "$1/train-images-idx3-ubyte.gz" ] || [ -f "$1/FashionMNIST/raw/train-images-idx3-ubyte" ]; }

if have "$DEBIAN_DIR" || have "$LOCAL_DIR"; then
    exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
    if [ "$SUDO" != none ]; then
        echo "installing Debian's dataset-fashion-mnist ..."
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { $SUDO apt-get update -q >/dev/null 2>&1 && \
                 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }
        if have "$DEBIAN_DIR"; then exit 0; fi
    fi
fi

echo "downloading Fashion-MNIST with torchvision into $LOCAL_DIR ..."
if "$PYTHON" -c "import torchvision; torchvision.datasets.FashionMNIST('$LOCAL_DIR', download=True)" >/dev/null 2>&1 \
        && have "$LOCAL_DIR"; then
    exit 0
fi

echo "degl: error: could not install Fashion-MNIST: no apt-get with root rights and no internet for torchvision's download;" >&2
echo "  put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and" >&2
echo "  t10k-labels-idx1-ubyte.gz into $LOCAL_DIR (or pass --data-dir DIR to degl)" >&2
exit 1
