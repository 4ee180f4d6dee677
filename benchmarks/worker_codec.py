"""Array codec throughput from 1 KB to 256 MB: encode and decode GB/s beside a plain memory copy.

    python benchmarks/worker_codec.py [--max-mb 256]

Encoding copies each array once into the message's bytes, decoding copies it once out (so the result is
writable). The floors beside them: `tobytes` (making a bytes object of the array, which is what a message
body is) and `copy` (ndarray.copy). Ratios near 1 mean the codec adds little beyond the copy it must make.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpufleet_worker import codec


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=int, default=256)
    args = parser.parse_args()
    sizes = [1 << 10]
    while sizes[-1] < args.max_mb << 20:
        sizes.append(sizes[-1] * 4)
    limit = 2 * sizes[-1] + (1 << 20)
    print(f"{'size':>8} {'encode GB/s':>12} {'decode GB/s':>12} {'tobytes GB/s':>13} {'copy GB/s':>10} "
          f"{'enc/tobytes':>12} {'dec/copy':>9}")  # fmt: skip
    for nbytes in sizes:
        array = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
        repeat = max(3, min(200, (64 << 20) // nbytes))
        data = codec.dumps({"a": array}, max_bytes=limit)
        encode = best_of(lambda: codec.dumps({"a": array}, max_bytes=limit), repeat)  # noqa: B023
        decode = best_of(lambda: codec.loads(data, max_bytes=limit), repeat)  # noqa: B023
        tobytes = best_of(array.tobytes, repeat)
        copy = best_of(array.copy, repeat)
        label = f"{nbytes >> 20} MB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KB"
        encode_gbs, decode_gbs, tobytes_gbs, copy_gbs = (
            nbytes / t / 1e9 for t in (encode, decode, tobytes, copy)
        )
        print(f"{label:>8} {encode_gbs:12.2f} {decode_gbs:12.2f} {tobytes_gbs:13.2f} {copy_gbs:10.2f} "
              f"{tobytes / encode:12.2f} {copy / decode:9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
