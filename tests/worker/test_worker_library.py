"""Every library task, the fan-out helpers and bad payloads, through a real solo worker and a real Redis."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from celery import Celery
from kombu.serialization import register as kombu_register
from workerproc import Worker, worker_env

from gpufleet_worker import codec
from gpufleet_worker.app import configure
from gpufleet_worker.errors import PayloadError
from gpufleet_worker.fanout import chunk_chord, map_chunks

TIMEOUT = 120
WORKER_MAX_PAYLOAD = 1 << 20
PRODUCER_MAX_PAYLOAD = 64 * WORKER_MAX_PAYLOAD


@pytest.fixture(scope="module")
def fleet(redis_server, tmp_path_factory):
    redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("library-worker")
    env = worker_env(redis_server.url, tmp, GPUFLEET_MAX_PAYLOAD_BYTES=str(WORKER_MAX_PAYLOAD))
    with Worker(env, tmp / "worker.log") as worker:
        producer = Celery("producer")
        # The producer may send more than the worker accepts: that is what the size-limit test needs.
        configure(producer, {**env, "GPUFLEET_MAX_PAYLOAD_BYTES": str(PRODUCER_MAX_PAYLOAD)})
        yield producer, worker


def call(fleet, name, *args, **kwargs):
    producer, _ = fleet
    return producer.send_task(name, args=args, kwargs=kwargs).get(timeout=TIMEOUT)


rng = np.random.default_rng(7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
def test_matmul(fleet, dtype):
    a = rng.standard_normal((33, 20)).astype(dtype)
    b = rng.standard_normal((20, 7)).astype(dtype)
    out = call(fleet, "gpufleet.matmul", a, b)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, a @ b, rtol=1e-5)


def test_matmul_reports_mismatched_shapes(fleet):
    with pytest.raises(ValueError, match=r"cannot multiply \(3, 4\) by \(3, 4\)"):
        call(fleet, "gpufleet.matmul", np.ones((3, 4)), np.ones((3, 4)))


def test_batched_matmul(fleet):
    a = rng.standard_normal((5, 8, 3))
    b = rng.standard_normal((5, 3, 4))
    np.testing.assert_allclose(call(fleet, "gpufleet.batched_matmul", a, b), np.matmul(a, b))


def test_fft_and_its_inverse(fleet):
    a = rng.standard_normal((16, 12))
    spectrum = call(fleet, "gpufleet.fft", a)
    np.testing.assert_allclose(spectrum, np.fft.fftn(a), atol=1e-9)
    np.testing.assert_allclose(call(fleet, "gpufleet.fft", a, axes=[1]), np.fft.fft(a, axis=1), atol=1e-9)
    np.testing.assert_allclose(call(fleet, "gpufleet.ifft", spectrum).real, a, atol=1e-9)


@pytest.mark.parametrize("op", ["sum", "prod", "mean", "std", "var", "min", "max", "argmin", "argmax"])
def test_reduce(fleet, op):
    a = rng.uniform(0.5, 1.5, (6, 5, 4))
    np.testing.assert_allclose(call(fleet, "gpufleet.reduce", a, op, axis=1), getattr(np, op)(a, axis=1))
    np.testing.assert_allclose(call(fleet, "gpufleet.reduce", a, op), getattr(np, op)(a))


def test_reduce_over_several_axes_and_unknown_ops(fleet):
    a = rng.standard_normal((3, 4, 5))
    np.testing.assert_allclose(call(fleet, "gpufleet.reduce", a, "sum", axis=(0, 2)), a.sum(axis=(0, 2)))
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        call(fleet, "gpufleet.reduce", a, "median")


def test_stats(fleet):
    a = rng.standard_normal((50, 3))
    got = call(fleet, "gpufleet.stats", a, axis=0, quantiles=[0.1, 0.5, 0.9])
    assert got["count"] == 50
    for name in ("sum", "mean", "std", "min", "max"):
        np.testing.assert_allclose(got[name], getattr(np, name)(a, axis=0))
    np.testing.assert_allclose(got["quantiles"], np.quantile(a, [0.1, 0.5, 0.9], axis=0))
    assert call(fleet, "gpufleet.stats", a)["count"] == a.size


def test_cosine_topk(fleet):
    corpus = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((9, 16)).astype(np.float32)
    got = call(fleet, "gpufleet.cosine_topk", queries, corpus, k=5)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    scores = unit(queries) @ unit(corpus).T
    expected = np.argsort(-scores, axis=1)[:, :5]
    np.testing.assert_array_equal(got["indices"], expected)
    np.testing.assert_allclose(got["scores"], np.take_along_axis(scores, expected, axis=1), rtol=1e-5)


def test_cosine_topk_of_one_query_with_k_beyond_the_corpus(fleet):
    corpus = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = call(fleet, "gpufleet.cosine_topk", np.array([1.0, 0.1]), corpus, k=10)
    assert got["indices"].tolist() == [[0, 2, 1]]


def test_normalize_images(fleet):
    images = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    got = call(fleet, "gpufleet.normalize_images", images, mean, std)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, (images / 255.0 - mean) / std, atol=1e-6)
    gray = rng.uniform(size=(2, 4, 4))
    np.testing.assert_allclose(call(fleet, "gpufleet.normalize_images", gray, 0.5, 2.0), (gray - 0.5) / 2)


def test_resize_images(fleet):
    images = rng.uniform(size=(2, 8, 6, 3))
    np.testing.assert_allclose(call(fleet, "gpufleet.resize_images", images, 8, 6), images)
    # With half-pixel centres, halving a size averages neighbouring pairs.
    half = call(fleet, "gpufleet.resize_images", images, 4, 3)
    pairs = images.reshape(2, 4, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(half, pairs)
    constant = np.full((1, 3, 3), 7, dtype=np.uint8)
    np.testing.assert_allclose(call(fleet, "gpufleet.resize_images", constant, 7, 5), np.full((1, 7, 5), 7.0))


def _convolve_reference(images, kernel):
    """scipy.signal.convolve2d(mode='same') written out: out[y, x] = sum k[i, j] img[y + cy - i, x + cx - j]."""
    n, h, w, c = images.shape
    kh, kw = kernel.shape
    cy, cx = (kh - 1) // 2, (kw - 1) // 2
    out = np.zeros(images.shape)
    for y in range(h):
        for x in range(w):
            for i in range(kh):
                for j in range(kw):
                    sy, sx = y + cy - i, x + cx - j
                    if 0 <= sy < h and 0 <= sx < w:
                        out[:, y, x, :] += kernel[i, j] * images[:, sy, sx, :]
    return out


@pytest.mark.parametrize("kernel_shape", [(3, 3), (2, 4), (1, 5)])
def test_convolve_images(fleet, kernel_shape):
    images = rng.standard_normal((2, 7, 6, 2))
    kernel = rng.standard_normal(kernel_shape)
    got = call(fleet, "gpufleet.convolve_images", images, kernel)
    np.testing.assert_allclose(got, _convolve_reference(images, kernel), atol=1e-9)


def test_map_chunks_joins_arrays_and_dicts(fleet):
    producer, _ = fleet
    a = rng.standard_normal((10, 6))
    b = rng.standard_normal((6, 3))
    got = map_chunks(producer.signature("gpufleet.matmul", args=(b,)), a, chunks=4, timeout=TIMEOUT)
    np.testing.assert_allclose(got, a @ b)
    corpus = rng.standard_normal((40, 6))
    top = map_chunks(producer.signature("gpufleet.cosine_topk", args=(corpus,), kwargs={"k": 3}), a, chunks=3,
                     timeout=TIMEOUT)  # fmt: skip
    whole = call(fleet, "gpufleet.cosine_topk", a, corpus, k=3)
    np.testing.assert_array_equal(top["indices"], whole["indices"])


def test_chunk_chord_joins_on_a_worker(fleet):
    producer, _ = fleet
    a = rng.standard_normal((9, 4))
    result = chunk_chord(producer.signature("gpufleet.reduce", kwargs={"op": "sum", "axis": 1}), a, chunks=3)
    np.testing.assert_allclose(result.get(timeout=TIMEOUT), a.sum(axis=1))


def _send_raw(producer, name, body: bytes):
    """Send `body` as a task message of the codec's content type (kombu keys decoders by content type,
    so the codec is registered again afterwards)."""
    kombu_register("test-raw", lambda _: body, lambda data: data, content_type=codec.CONTENT_TYPE,
                   content_encoding="binary")  # fmt: skip
    try:
        return producer.send_task(name, args=(), serializer="test-raw")
    finally:
        codec.register(PRODUCER_MAX_PAYLOAD)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\xc1 not msgpack", "could not be decoded: malformed gpufleet-msgpack payload"),
        (codec.dumps([[np.arange(1000.0)], {}, {}])[:-100], "could not be decoded: malformed"),
        (codec.dumps([[np.zeros(WORKER_MAX_PAYLOAD)], {}, {}], max_bytes=1 << 30), "exceeds the limit"),
    ],
    ids=["garbage", "truncated", "oversized"],
)
def test_a_bad_payload_fails_its_task_and_the_worker_goes_on(fleet, body, message):
    producer, worker = fleet
    result = _send_raw(producer, "gpufleet.matmul", body)
    with pytest.raises(PayloadError, match=message):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"
    assert worker.proc.poll() is None
    np.testing.assert_allclose(call(fleet, "gpufleet.matmul", np.eye(2), np.eye(2)), np.eye(2))


def test_pickle_is_refused_and_the_caller_told(fleet):
    producer, worker = fleet
    result = producer.send_task("gpufleet.matmul", args=(np.eye(2), np.eye(2)), serializer="pickle")
    with pytest.raises(PayloadError, match="Refusing to deserialize untrusted content of type pickle"):
        result.get(timeout=TIMEOUT)
    assert worker.proc.poll() is None
