"""`fashion-mnist`: Zalando's 28x28 grayscale clothing images (Xiao et al. 2017), as IDX files."""

from __future__ import annotations

from energybench.data.idx import IDXDataset


class FashionMNIST(IDXDataset):
    """60,000 training and 10,000 test images in 10 classes; Debian's ``dataset-fashion-mnist`` ships them."""

    num_classes, in_channels, image_size, train_size, test_size = 10, 1, 28, 60000, 10000
    mean, std = (0.2860,), (0.3530,)
    subdirs = ("fashion-mnist", "FashionMNIST/raw")
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    torchvision_name = "FashionMNIST"
    files_hint = ("the four IDX files (train-images-idx3-ubyte.gz, ...) from Fashion-MNIST, or "
                  "`apt-get install dataset-fashion-mnist`")
