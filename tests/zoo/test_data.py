"""Data loaders: embedded MNIST-5k, sklearn digits, and CIFAR-10 / ImageFolder on tiny generated files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from lrdlab.zoo import data
from lrdlab.zoo.data import (
    ArrayDataset,
    Images,
    LoaderOptions,
    ShardSampler,
    digits,
    get_loaders,
    random_shift,
    stratified_split,
    to_images,
)


def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    tr, te = stratified_split(labels, 100, seed=3)
    tr2, te2 = stratified_split(labels, 100, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert len(te) == 100 and len(tr) == 400 and not set(tr) & set(te)
    assert np.bincount(labels[te]).tolist() == [10] * 10
    assert not np.array_equal(te, stratified_split(labels, 100, seed=4)[1])
    uneven = np.array([0] * 7 + [1] * 3)
    assert len(stratified_split(uneven, 3)[1]) == 3
    with pytest.raises(ValueError, match="test_size"):
        stratified_split(labels, 0)


def test_to_images_pads_centred_and_repeats_channels():
    x = to_images(np.full((2, 28, 28), 255.0), 255.0, 32, 3, 0.0, 1.0)
    assert x.shape == (2, 3, 32, 32)
    assert x[0, 0, 2:30, 2:30].eq(1).all() and x[0, 0, :2].eq(0).all() and x[0, 0, :, 30:].eq(0).all()
    assert torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError, match="pad only"):
        to_images(np.zeros((1, 28, 28)), 1.0, 16, 1, 0.0, 1.0)


def test_digits_loaders():
    loaders = get_loaders("digits", 64)
    assert loaders.num_classes == 10 and loaders.input_size == (1, 8, 8)
    assert len(loaders.train.dataset) + len(loaders.test.dataset) == 1797
    x, y = next(iter(loaders.train))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.long
    assert abs(float(loaders.train.dataset.images.mean())) < 0.1
    bigger = get_loaders("digits", 32, Images(size=16, channels=3), subset=100)
    assert bigger.input_size == (3, 16, 16) and len(bigger.train.dataset) == 100


def test_mnist5k_is_split_4000_1000_and_cached(tmp_path):
    loaders = get_loaders("mnist5k", 128, cache_dir=tmp_path)
    assert (tmp_path / "mnist5k.npz").is_file()
    assert len(loaders.train.dataset) == 4000 and len(loaders.test.dataset) == 1000
    assert loaders.input_size == (3, 32, 32) and loaders.num_classes == 10
    assert np.bincount(loaders.test.dataset.labels.numpy()).tolist() == [100] * 10
    again = data.mnist5k(tmp_path)[1]
    assert torch.equal(again.images, loaders.test.dataset.images)
    raw, _ = data.mnist5k_arrays(tmp_path)
    assert raw.dtype == np.uint8 and raw.shape == (5000, 28, 28) and raw.max() == 255


def test_every_training_image_is_seen_once_per_epoch():
    loaders = get_loaders("digits", 100)
    seen = torch.cat([y for _, y in loaders.train])
    assert len(seen) == len(loaders.train.dataset)
    assert torch.equal(seen.sort().values, loaders.train.dataset.labels.sort().values)


def write_fake_cifar(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in data.CIFAR_FILES[:-1]:
        batch = {"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.randint(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_from_local_files(tmp_path):
    write_fake_cifar(tmp_path)
    loaders = get_loaders("cifar10", 4, root=tmp_path, loader=LoaderOptions(test_batch_size=4))
    assert len(loaders.train.dataset) == 30 and len(loaders.test.dataset) == 6
    assert loaders.num_classes == 10 and loaders.input_size == (3, 32, 32)
    x, y = next(iter(loaders.test))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)


def test_cifar10_missing_says_where_to_put_it(tmp_path):
    with pytest.raises(ValueError, match="cifar-10-batches-py") as err:
        get_loaders("cifar10", 4, root=tmp_path / "nowhere")
    assert "cs.toronto.edu" in str(err.value) and "nowhere" in str(err.value)


def write_image_folder(root):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_imagenet_folder(tmp_path):
    write_image_folder(tmp_path)
    loaders = get_loaders(f"imagenet:{tmp_path}", 2, Images(size=16), loader=LoaderOptions(test_batch_size=2))
    assert loaders.num_classes == 2 and loaders.input_size == (3, 16, 16)
    assert len(loaders.train.dataset) == 6 and len(loaders.test.dataset) == 4
    x, y = next(iter(loaders.test))
    assert x.shape == (2, 3, 16, 16) and set(y.tolist()) <= {0, 1}


def test_imagenet_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="train/<class>"):
        get_loaders(f"imagenet:{tmp_path}", 2)


@pytest.mark.parametrize("name", ["mnist", "imagenet", "cifar10:foo", "digits:x"])
def test_unknown_names(name):
    with pytest.raises(ValueError, match="unknown data"):
        get_loaders(name, 8)


def test_shards_cover_the_test_set_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_ddp_batches_are_the_single_process_batches_split(monkeypatch):
    """get_loaders under 2 processes: rank r's k-th batch (B/2) ∪ over ranks == one process's k-th batch of B."""

    def batches(rank: int, size: int) -> list[list[tuple]]:
        monkeypatch.setattr(data, "world", lambda: (rank, size))
        loader = get_loaders("digits", 64, seed=0).train
        return [sorted(tuple(x.flatten().tolist()) for x in xb) for xb, _ in list(loader)[:3]]

    single, ranks = batches(0, 1), [batches(r, 2) for r in range(2)]
    for k in range(3):
        assert len(ranks[0][k]) == len(ranks[1][k]) == 32
        assert sorted(ranks[0][k] + ranks[1][k]) == single[k]


def test_random_shift_translates_each_image_within_the_bound():
    torch.manual_seed(0)
    img = torch.zeros(64, 1, 9, 9)
    img[:, :, 4, 4] = 1.0  # one bright pixel in the centre of a flat background
    out = random_shift(img, 2)
    assert out.shape == img.shape
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1], (out[:, 0] == 1).nonzero()[:, 2]
    assert len(rows) == 64  # the pixel survives in every image, moved by at most 2
    assert (rows - 4).abs().max() == 2 and (cols - 4).abs().max() == 2
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) > 10  # offsets differ per image
    assert torch.equal(random_shift(img, 0), img)


def test_shift_augments_training_images_only():
    train, test = digits(shift=1)
    assert train.shift == 1 and test.shift == 0
    x1, _ = train.__getitems__(list(range(32)))
    assert not torch.equal(x1, train.images[:32])
    assert torch.equal(test.__getitems__([0, 1])[0], test.images[:2])
    with pytest.raises(ValueError, match="shift must be an int"):
        ArrayDataset(train.images, train.labels, shift=-1)
    with pytest.raises(ValueError, match="in-memory sets"):
        get_loaders("cifar10", images=Images(shift=2))


@pytest.mark.parametrize("make, words", [
    (lambda: Images(size=0), "Images: size must be an int >= 1 or None"),
    (lambda: Images(channels=2.5), "Images: channels must be an int >= 1 or None"),
    (lambda: Images(shift=-1), "Images: shift must be an int >= 0"),
    (lambda: Images(augment="no"), "Images: augment must be True or False"),
    (lambda: LoaderOptions(num_workers=-1), "LoaderOptions: num_workers must be an int >= 0"),
    (lambda: LoaderOptions(test_batch_size=0), "LoaderOptions: test_batch_size must be an int >= 1 or None"),
    (lambda: get_loaders("digits", 8, {"channels": 3}), r"images must be Images\(...\) .*e.g. Images\(channels=3\)"),
])
def test_loader_configs_name_the_bad_field(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_loader_options_reach_the_loaders():
    loaders = get_loaders("digits", 32, loader=LoaderOptions(test_batch_size=5, drop_last=True, pin_memory=True))
    assert loaders.test.batch_size == 5 and loaders.train.drop_last and loaders.train.pin_memory
    assert len(loaders.train.dataset) % 32 != 0 and all(len(x) == 32 for x, _ in loaders.train)
