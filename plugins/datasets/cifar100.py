"""`cifar100`: CIFAR-100 (fine labels) as torchvision downloads it (pickled batches)."""

from __future__ import annotations

from energybench.data.cifar_batches import CIFARBatchesDataset


class CIFAR100(CIFARBatchesDataset):
    """50,000 training and 10,000 test 32x32 colour images in 100 classes."""

    num_classes, mean, std = 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    folder = "cifar-100-python"
    train_files, test_file, label_key = ("train",), "test", b"fine_labels"
    torchvision_name = "CIFAR100"
    files_hint = "the folder cifar-100-python (train, test)"
