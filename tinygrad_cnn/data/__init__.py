"""Data sets, transforms and the DataLoader.

    from tinygrad_cnn.data import FashionMNIST, DataLoader, transforms as T
    train = FashionMNIST(root, train=True, transform=T.Compose([T.ToTensor(), T.Resize(224)]))
    for X, y in DataLoader(train, batch_size=256, shuffle=True, seed=0):
        ...                       # X float32 (256, 1, 224, 224), y int64 (256,)

Modules: ``fashion_mnist`` and ``cifar10`` (the official files, validated),
``kaggle_cifar10`` (the Kaggle competition's PNG folders), ``transforms``,
``loader`` (DataLoader with a prefetch thread), ``download`` (atomic,
MD5-checked downloads and safe archive extraction).
"""
from . import transforms
from .cifar10 import CIFAR10
from .download import DownloadError, download_url, md5sum
from .fashion_mnist import FashionMNIST, load_data_fashion_mnist
from .kaggle_cifar10 import (ImageFolder, KaggleCIFAR10, read_csv_labels, reorg_test,
                             reorg_train_valid, write_submission)
from .loader import DataLoader, ImageDataset, Subset
from ..distributed.sampler import DistributedSampler
