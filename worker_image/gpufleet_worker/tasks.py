"""The task library: `gpufleet.<name>` tasks that run on CuPy on a GPU worker and on NumPy elsewhere.

Each task is a plain function of `xp` and device arrays. Callers pass NumPy arrays and get them back
(gpufleet_worker.client), or pass nested lists and get lists back (a plain Celery producer, JSON).
"""

from __future__ import annotations

import numpy as np

from .gputask import gpu_task

# Bounds the similarity matrix that cosine_topk holds at once (queries x corpus scores).
TOPK_BLOCK_BYTES = 256 * 1024**2


def _require_ndim(what: str, a, ndims: tuple[int, ...]) -> None:
    if a.ndim not in ndims:
        wanted = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{what} must be {wanted}, got shape {tuple(a.shape)}")


@gpu_task(name="gpufleet.matmul", arrays=("a", "b"))
def matmul(xp, a, b):
    """a @ b for 2-D a and b."""
    _require_ndim("a", a, (2,))
    _require_ndim("b", b, (2,))
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"cannot multiply {tuple(a.shape)} by {tuple(b.shape)}: inner sizes differ")
    return a @ b


@gpu_task(name="gpufleet.batched_matmul", arrays=("a", "b"))
def batched_matmul(xp, a, b):
    """A stack of products: a[i] @ b[i] for 3-D a and b (a batch of 1 broadcasts)."""
    _require_ndim("a", a, (3,))
    _require_ndim("b", b, (3,))
    if a.shape[2] != b.shape[1]:
        raise ValueError(f"cannot multiply batches {tuple(a.shape)} by {tuple(b.shape)}: inner sizes differ")
    return xp.matmul(a, b)


@gpu_task(name="gpufleet.fft", arrays=("a",))
def fft(xp, a, axes=None, norm=None):
    """The n-dimensional discrete Fourier transform over `axes` (all by default)."""
    return xp.fft.fftn(a, axes=axes, norm=norm)


@gpu_task(name="gpufleet.ifft", arrays=("a",))
def ifft(xp, a, axes=None, norm=None):
    """The inverse of gpufleet.fft."""
    return xp.fft.ifftn(a, axes=axes, norm=norm)


_REDUCTIONS = ("sum", "prod", "mean", "std", "var", "min", "max", "argmin", "argmax")


@gpu_task(name="gpufleet.reduce", arrays=("a",))
def reduce(xp, a, op="sum", axis=None):
    """One reduction of `a` along `axis` (None: all): sum, prod, mean, std, var, min, max, argmin, argmax."""
    if op not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {op!r}; use one of {', '.join(_REDUCTIONS)}")
    if isinstance(axis, list):
        axis = tuple(axis)  # the codec brings tuples back as lists
    return getattr(xp, op)(a, axis=axis)


@gpu_task(name="gpufleet.stats", arrays=("a",))
def stats(xp, a, axis=None, quantiles=()):
    """Summary statistics along `axis`: count, sum, mean, std, min, max, and the requested quantiles."""
    if isinstance(axis, list):
        axis = tuple(axis)
    if a.size == 0:
        raise ValueError("stats of an empty array are undefined")
    total = xp.sum(a, axis=axis)
    result = {
        "count": a.size // total.size,
        "sum": total,
        "mean": xp.mean(a, axis=axis),
        "std": xp.std(a, axis=axis),
        "min": xp.min(a, axis=axis),
        "max": xp.max(a, axis=axis),
    }
    if quantiles:
        result["quantiles"] = xp.quantile(a, xp.asarray(quantiles, dtype=xp.float64), axis=axis)
    return result


def _unit_rows(xp, x):
    norms = xp.linalg.norm(x, axis=1, keepdims=True)
    return x / xp.where(norms == 0, 1, norms)


@gpu_task(name="gpufleet.cosine_topk", arrays=("queries", "corpus"))
def cosine_topk(xp, queries, corpus, k=10):
    """The k corpus rows most cosine-similar to each query row: {"indices": (q, k), "scores": (q, k)}."""
    if queries.ndim == 1:
        queries = queries[None, :]
    _require_ndim("queries", queries, (2,))
    _require_ndim("corpus", corpus, (2,))
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} features, the corpus rows {corpus.shape[1]}")
    if not 1 <= k:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, corpus.shape[0])
    dtype = np.result_type(queries.dtype, corpus.dtype, np.float32)
    unit_corpus_t = _unit_rows(xp, corpus.astype(dtype, copy=False)).T
    block = max(1, TOPK_BLOCK_BYTES // max(1, corpus.shape[0] * dtype.itemsize))
    indices, scores = [], []
    for start in range(0, queries.shape[0], block):
        sims = _unit_rows(xp, queries[start : start + block].astype(dtype, copy=False)) @ unit_corpus_t
        top = xp.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_scores = xp.take_along_axis(sims, top, axis=1)
        order = xp.argsort(-top_scores, axis=1)
        indices.append(xp.take_along_axis(top, order, axis=1))
        scores.append(xp.take_along_axis(top_scores, order, axis=1))
    return {"indices": xp.concatenate(indices).astype(xp.int64), "scores": xp.concatenate(scores)}


def _as_nhwc(images):
    """Images as (batch, height, width, channels); a batch of grayscale (batch, height, width) gets a channel."""
    _require_ndim("images", images, (3, 4))
    return images[..., None] if images.ndim == 3 else images


def _float_dtype(*arrays) -> np.dtype:
    return np.result_type(*(a.dtype for a in arrays), np.float32)


@gpu_task(name="gpufleet.normalize_images", arrays=("images",))
def normalize_images(xp, images, mean=0.0, std=1.0, scale=None):
    """(images / scale - mean) / std per channel, as float32 (or float64 for float64 input).

    `scale` defaults to the dtype's maximum for integer images (255 for uint8) and to 1 for float images.
    """
    batch = _as_nhwc(images)
    if scale is None:
        scale = np.iinfo(batch.dtype).max if np.issubdtype(batch.dtype, np.integer) else 1.0
    dtype = _float_dtype(batch)
    mean = xp.asarray(mean, dtype=dtype)
    std = xp.asarray(std, dtype=dtype)
    if bool(xp.any(std == 0)):
        raise ValueError("std must not be zero")
    out = (batch.astype(dtype) / dtype.type(scale) - mean) / std
    return out.reshape(images.shape) if images.ndim == 3 else out


def _linear_taps(xp, n_in: int, n_out: int):
    """Source indices and weights of linear interpolation with half-pixel centres (as OpenCV and PyTorch)."""
    pos = (xp.arange(n_out, dtype=xp.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = xp.clip(pos, 0, n_in - 1)
    lo = xp.floor(pos).astype(xp.int64)
    hi = xp.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


@gpu_task(name="gpufleet.resize_images", arrays=("images",))
def resize_images(xp, images, height, width):
    """Bilinear resize of a batch to height x width (no antialiasing), as float32 (or float64)."""
    batch = _as_nhwc(images)
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {height}x{width}")
    dtype = _float_dtype(batch)
    batch = batch.astype(dtype)
    y0, y1, wy = _linear_taps(xp, batch.shape[1], height)
    x0, x1, wx = _linear_taps(xp, batch.shape[2], width)
    wy = wy.astype(dtype)[None, :, None, None]
    wx = wx.astype(dtype)[None, None, :, None]
    rows = batch[:, y0] * (1 - wy) + batch[:, y1] * wy
    out = rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx
    return out[..., 0] if images.ndim == 3 else out


@gpu_task(name="gpufleet.convolve_images", arrays=("images", "kernel"))
def convolve_images(xp, images, kernel):
    """2-D convolution of every image and channel with `kernel`, zero-padded, same size out.

    The same as scipy.signal.convolve2d(image, kernel, mode="same") on each channel.
    """
    batch = _as_nhwc(images)
    _require_ndim("kernel", kernel, (2,))
    kh, kw = kernel.shape
    dtype = _float_dtype(batch, kernel)
    padded = xp.pad(batch.astype(dtype), ((0, 0), (kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)))
    flipped = kernel[::-1, ::-1].astype(dtype)
    height, width = batch.shape[1], batch.shape[2]
    out = xp.zeros(batch.shape, dtype=dtype)
    # One shifted multiply-add per kernel tap: kernels are small, images large.
    for i in range(kh):
        for j in range(kw):
            out += flipped[i, j] * padded[:, i : i + height, j : j + width]
    return out[..., 0] if images.ndim == 3 else out
