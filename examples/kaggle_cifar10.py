"""d2l's Kaggle assignment: classify CIFAR-10 images (d2l §13.13 Image Classification
(CIFAR-10) on Kaggle, https://d2l.ai/chapter_computer-vision/kaggle-cifar10.html).

The competition gives ``train/<id>.png`` with ``trainLabels.csv`` and ``test/<id>.png``.
The steps, as d2l takes them:

1. reorganise the images into one folder per class, holding back a tenth of each class
   for validation (``reorg_train_valid``, ``reorg_test``);
2. read them with ``ImageFolder``, augmenting the training images (a padded random crop
   and a horizontal flip) and normalising every channel;
3. train a ResNet-18 with SGD (momentum 0.9, weight decay 5e-4), the learning rate
   multiplied by 0.9 every 4 epochs;
4. classify the test images and write ``submission.csv`` (``id,label``).

    python examples/kaggle_cifar10.py --data-dir ../data/cifar-10
    python examples/kaggle_cifar10.py --quick     # a made-up folder of 16 random images

(``tinygrad-cnn kaggle-cifar10`` is the same run as a command.)
"""
import tempfile
from pathlib import Path

import matplotlib.image
import numpy as np

import chapter
import models
from tinygrad_cnn.data import DataLoader, ImageFolder, reorg_test, reorg_train_valid
from tinygrad_cnn.data import transforms as T
from tinygrad_cnn.data import write_submission
from tinygrad_cnn.train import fit, predict, step_schedule

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)   # CIFAR-10's per channel


def make_fake_competition(root, classes=("cat", "dog"), per_class=6, test_images=4):
    """The competition's layout with random 32x32 images: the --quick stand-in."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    labels = [classes[i % len(classes)] for i in range(per_class * len(classes))]
    for i, _ in enumerate(labels, start=1):
        matplotlib.image.imsave(root / "train" / f"{i}.png",
                                rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for i in range(1, test_images + 1):
        matplotlib.image.imsave(root / "test" / f"{i}.png",
                                rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    (root / "trainLabels.csv").write_text(
        "id,label\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels, start=1)))


def run(data_dir, out, args):
    reorg_train_valid(data_dir, valid_ratio=0.1)
    reorg_test(data_dir)
    folders = Path(data_dir) / "train_valid_test"
    normalize = T.Normalize(MEAN, STD)
    augment = T.Compose([T.ToTensor(), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                         normalize])
    plain = T.Compose([T.ToTensor(), normalize])
    train_set = ImageFolder(folders / "train", augment)
    valid_set = ImageFolder(folders / "valid", plain)
    test_set = ImageFolder(folders / "test", plain)

    batch_size = args.batch_size or (4 if args.quick else 128)
    net = models.get("resnet18", in_channels=3, num_classes=len(train_set.classes))
    # drop_last: a last batch of one image would break batch norm
    train_iter = DataLoader(train_set, batch_size, shuffle=True, drop_last=True, seed=0)
    valid_iter, test_iter = (DataLoader(d, batch_size) for d in (valid_set, test_set))
    lr, epochs = args.lr or 2e-4, args.epochs or (1 if args.quick else 20)
    fit(net, train_iter, valid_iter, epochs, lr, args.device, momentum=0.9, weight_decay=5e-4,
        lr_schedule=step_schedule(lr, period=4, decay=0.9), init=None,
        progress=not args.quick, out_dir=None if args.quick else out)

    predictions = predict(net, test_iter, args.device)
    path = write_submission(Path(out) / "submission.csv", test_set.ids, predictions,
                            train_set.classes)
    print(f"{len(predictions)} test images classified; wrote {path}")


def main():
    p = chapter.parser(__doc__.splitlines()[0])
    p.set_defaults(data_dir=Path("../data/cifar-10"))
    args = p.parse_args()
    if not args.quick:
        run(args.data_dir, Path("runs") / "examples" / "kaggle_cifar10", args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_fake_competition(Path(tmp) / "cifar-10")
        run(Path(tmp) / "cifar-10", Path(tmp), args)


if __name__ == "__main__":
    main()
