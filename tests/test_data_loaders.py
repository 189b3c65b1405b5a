"""Loaders: batches cover each epoch once, normalise exactly, resume mid-epoch exactly, augment like a naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mwnet.data import BatchLoader, LazyImages, MetaSampler, crop_flip, draw_augmentation


def images(n=50, c=3, h=32, w=32, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def collect(loader, limit=None):
    out = []
    for i, batch in enumerate(loader):
        out.append(tuple(t.clone() for t in batch))
        if limit is not None and i + 1 == limit:
            break
    return out


def test_one_epoch_covers_every_sample_once_and_normalises():
    x, y = images(), torch.arange(50) % 7
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    loader = BatchLoader(x, y, batch_size=16, seed=1, mean=mean, std=std)
    batches = collect(loader)
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2] and len(loader) == 4
    idx = torch.cat([b[2] for b in batches])
    assert sorted(idx.tolist()) == list(range(50)) and idx.tolist() != list(range(50))
    xb, yb, ib = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and torch.equal(yb, y[ib])
    ref = (x[ib].double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(xb.double(), ref, atol=1e-5)
    assert loader.epoch == 1
    second = torch.cat([b[2] for b in collect(loader)])
    assert not torch.equal(second, idx)  # a new permutation each epoch


def test_no_shuffle_drop_last_and_tables():
    x = torch.randn(10, 4)
    loader = BatchLoader(x, torch.zeros(10), batch_size=4, shuffle=False, drop_last=True, mean=[1, 0, 0, 0],
                         std=[2, 1, 1, 1])
    batches = collect(loader)
    assert len(batches) == len(loader) == 2 and batches[1][2].tolist() == [4, 5, 6, 7]
    assert torch.allclose(batches[0][0][:, 0], (x[:4, 0] - 1) / 2) and torch.equal(batches[0][0][:, 1:], x[:4, 1:])


@pytest.mark.parametrize("augment", [False, True])
def test_resume_mid_epoch_gives_the_identical_remaining_sequence(augment):
    x, y = images(n=45), torch.arange(45) % 10
    kwargs = dict(batch_size=8, seed=3, augment=augment, mean=(0.5,) * 3, std=(0.2,) * 3)
    reference = BatchLoader(x, y, **kwargs)
    full = collect(reference) + collect(reference)  # two epochs, uninterrupted

    run = BatchLoader(x, y, **kwargs)
    seen = collect(run, limit=3)  # three batches of the first epoch, then a checkpoint
    state = run.state_dict()
    resumed = BatchLoader(x, y, **kwargs | {"seed": 999})  # the seed is restored from the state
    resumed.load_state_dict(state)
    rest = collect(resumed) + collect(resumed)
    assert len(seen) + len(rest) == len(full)
    for a, b in zip(seen + rest, full, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert resumed.epoch == 2


def test_resume_at_the_end_of_an_epoch():
    x, y = images(n=20), torch.arange(20)
    reference = BatchLoader(x, y, batch_size=5, seed=0)
    full = collect(reference) + collect(reference)
    run = BatchLoader(x, y, batch_size=5, seed=0)
    first = collect(run, limit=4)  # the last batch of the epoch was handed out, the loop did not end yet
    resumed = BatchLoader(x, y, batch_size=5, seed=0)
    resumed.load_state_dict(run.state_dict())
    assert collect(resumed) == []  # the epoch in progress has nothing left
    second = collect(resumed)
    assert all(torch.equal(a[2], b[2]) for a, b in zip(first + second, full, strict=True))


def naive_crop_flip(x: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
    """One sample at a time with numpy: reflect-pad, slice, mirror."""
    out = np.empty_like(x)
    h, w = x.shape[2:]
    for k in range(len(x)):
        padded = np.pad(x[k], ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
        crop = padded[:, offsets[k, 0]: offsets[k, 0] + h, offsets[k, 1]: offsets[k, 1] + w]
        out[k] = crop[:, :, ::-1] if flips[k] else crop
    return out


@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (30, 1, 28, 28), (9, 2, 8, 11)])
def test_crop_flip_matches_a_naive_loop(shape):
    x = torch.rand(shape)
    offsets, flips = draw_augmentation(shape[0], torch.Generator().manual_seed(0))
    got = crop_flip(x, offsets, flips, 4)
    np.testing.assert_array_equal(got.numpy(), naive_crop_flip(x.numpy(), offsets.numpy(), flips.numpy(), 4))


def test_augmentation_statistics():
    offsets, flips = draw_augmentation(90_000, torch.Generator().manual_seed(1))
    assert int(offsets.min()) == 0 and int(offsets.max()) == 8
    freq = torch.bincount(offsets.flatten(), minlength=9).double() / offsets.numel()
    assert (freq - 1 / 9).abs().max() < 0.005  # uniform over the 9 offsets
    assert abs(flips.double().mean().item() - 0.5) < 0.01
    # Through the loader: an image whose pixels encode their column reveals the flip and the column offset.
    w = 32
    x = (torch.arange(w, dtype=torch.uint8) * 4).expand(2000, 3, 32, w).contiguous()
    loader = BatchLoader(x, torch.zeros(2000), batch_size=500, seed=2, augment=True)
    xb = torch.cat([b[0] for b in loader]) * 255 / 4  # column index of each output pixel (after reflection)
    # Away from the border no reflection is involved: columns run backwards exactly in the flipped samples, and
    # output column 16 is input column ox + 12 (ox + 11 when flipped) for a crop offset ox in [0, 8].
    flipped = xb[:, 0, 0, 17] < xb[:, 0, 0, 16]
    assert abs(flipped.double().mean().item() - 0.5) < 0.04
    ox = (xb[:, 0, 16, 16].round() - torch.where(flipped, 11, 12)).long()
    assert int(ox.min()) == 0 and int(ox.max()) == 8
    assert (torch.bincount(ox, minlength=9) / 2000 - 1 / 9).abs().max() < 0.035


def test_augment_needs_images():
    with pytest.raises(ValueError, match=r"augmentation needs images \(N, C, H, W\), got shape \(5, 3\)"):
        BatchLoader(torch.zeros(5, 3), torch.zeros(5), augment=True)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        BatchLoader(torch.zeros(5, 3), torch.zeros(5), batch_size=0)
    with pytest.raises(ValueError, match=r"mean has 2 values for 3 channels/features"):
        BatchLoader(torch.zeros(5, 3), torch.zeros(5), mean=[0, 0], std=[1, 1])
    with pytest.raises(ValueError, match=r"loader state is for 5 samples, this loader has 6"):
        BatchLoader(torch.zeros(6, 3), torch.zeros(6)).load_state_dict(BatchLoader(torch.zeros(5, 3),
                                                                                   torch.zeros(5)).state_dict())


def test_meta_sampler_is_endless_reshuffles_and_resumes():
    x, y = images(n=25, c=1, h=4, w=4), torch.arange(25) % 5
    meta = MetaSampler(x, y, batch_size=10, seed=4)
    draws = [meta.next() for _ in range(9)]  # three passes of 10, 10, 5
    assert [len(d[1]) for d in draws] == [10, 10, 5] * 3
    passes = [torch.cat([d[1] for d in draws[i: i + 3]]) for i in (0, 3, 6)]
    assert all(sorted(p.tolist()) == sorted(y.tolist()) for p in passes)
    firsts = [draws[i][0] for i in (0, 3, 6)]
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])

    again = MetaSampler(x, y, batch_size=10, seed=4)
    for _ in range(4):
        again.next()
    state = again.state_dict()
    resumed = MetaSampler(x, y, batch_size=10, seed=0)
    resumed.load_state_dict(state)
    for expected in draws[4:]:
        got = resumed.next()
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    with pytest.raises(ValueError, match="the meta set is empty"):
        MetaSampler(x[:0], y[:0])


def test_meta_sampler_takes_a_dataset_or_a_dataloader_and_never_ends():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.randn(7, 3, dtype=torch.float64), torch.arange(7) % 3
    dataset = TensorDataset(x, y)
    meta = MetaSampler(dataset, batch_size=3, seed=2)
    draws = [next(meta) for _ in range(9)]  # three passes of 3, 3, 1
    assert [len(d[1]) for d in draws] == [3, 3, 1] * 3
    for i in (0, 3, 6):  # every pass is a permutation of the data set, and the samples stay paired
        xs, ys = torch.cat([d[0] for d in draws[i:i + 3]]), torch.cat([d[1] for d in draws[i:i + 3]])
        order = [int(torch.nonzero((x == row).all(1))[0]) for row in xs]
        assert sorted(order) == list(range(7)) and torch.equal(ys, y[order])
    assert not torch.equal(draws[0][0], draws[3][0])
    # Same seed, same batches as the tensor sampler's positions; a saved state resumes at the exact batch.
    again = MetaSampler(dataset, batch_size=3, seed=2)
    next(again), next(again)
    resumed = MetaSampler(dataset, batch_size=3, seed=5)
    resumed.load_state_dict(again.state_dict())
    assert all(torch.equal(next(resumed)[0], d[0]) for d in draws[2:])

    loader = MetaSampler(DataLoader(dataset, batch_size=4))  # not shuffled: the order is the loader's
    got = [next(loader)[1].tolist() for _ in range(5)]
    assert got == [[0, 1, 2, 0], [1, 2, 0], [0, 1, 2, 0], [1, 2, 0], [0, 1, 2, 0]] and loader.state_dict() == {
        "passes": 2}
    pairs = MetaSampler(DataLoader(TensorDataset(x, y, x), batch_size=7))  # (x, y, extra…) batches: x, y taken
    assert torch.equal(next(pairs)[1], y)

    with pytest.raises(ValueError, match="y must be left out when the meta set is a TensorDataset"):
        MetaSampler(dataset, y)
    with pytest.raises(ValueError, match="a DataLoader applies its own transforms"):
        MetaSampler(DataLoader(dataset), augment=True)
    with pytest.raises(ValueError, match="the meta set is empty"):
        MetaSampler(TensorDataset(x[:0], y[:0]))
    with pytest.raises(ValueError, match="give the meta labels y"):
        MetaSampler(x)


def test_streaming_a_lazy_folder_gives_the_same_batches(tmp_path):
    from PIL import Image

    x = images(n=12, h=6, w=7)
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    lazy = LazyImages(paths, (6, 7), "RGB", workers=2)
    y = torch.arange(12) % 3
    a = collect(BatchLoader(lazy, y, batch_size=5, seed=1, augment=True, mean=(0.5,) * 3, std=(0.5,) * 3))
    b = collect(BatchLoader(x, y, batch_size=5, seed=1, augment=True, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert all(torch.equal(u, v) for p, q in zip(a, b, strict=True) for u, v in zip(p, q, strict=True))
    assert torch.equal(lazy[torch.arange(12)], x)  # > 8 images: decoded on the thread pool


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batches_live_on_the_device_and_match_the_cpu():
    x, y = images(n=40), torch.arange(40) % 4
    kwargs = dict(batch_size=16, seed=5, augment=True, mean=(0.4,) * 3, std=(0.3,) * 3)
    cpu = collect(BatchLoader(x, y, **kwargs))
    gpu = collect(BatchLoader(x, y, device="cuda", **kwargs))
    for a, b in zip(cpu, gpu, strict=True):
        assert b[0].is_cuda and b[1].is_cuda
        assert torch.allclose(a[0], b[0].cpu(), atol=1e-6) and torch.equal(a[2], b[2].cpu())
