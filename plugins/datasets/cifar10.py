"""`cifar10`: Krizhevsky's CIFAR-10 as torchvision downloads it (pickled batches): the paper-scale dataset."""

from __future__ import annotations

from energybench.data.cifar_batches import CIFARBatchesDataset

#: CIFAR-10's per-channel mean and standard deviation of the training images (also used by cifar10-jpeg).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


class CIFAR10(CIFARBatchesDataset):
    """50,000 training and 10,000 test 32x32 colour images in 10 classes."""

    num_classes, mean, std = 10, CIFAR10_MEAN, CIFAR10_STD
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_file = "test_batch"
    torchvision_name = "CIFAR10"
    files_hint = "the folder cifar-10-batches-py (data_batch_1..5, test_batch)"
