"""`mnist`: LeCun et al.'s 28x28 handwritten digits, as IDX files."""

from __future__ import annotations

from energybench.data.idx import IDXDataset


class MNIST(IDXDataset):
    """60,000 training and 10,000 test images of the digits 0-9."""

    num_classes, in_channels, image_size, train_size, test_size = 10, 1, 28, 60000, 10000
    mean, std = (0.1307,), (0.3081,)
    subdirs = ("mnist", "MNIST/raw")
    torchvision_name = "MNIST"
    files_hint = "the four MNIST IDX files (train-images-idx3-ubyte.gz, ...)"
