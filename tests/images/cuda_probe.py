"""Run inside the CUDA worker image (no GPU needed): what of CuPy's CUDA stack loads without a driver.

Prints one JSON object: CuPy's version, whether NVRTC compiles a kernel that includes CuPy's own headers, and
the CUDA libraries (from the nvidia-* wheels) loaded once CuPy's library modules are used and the kernel built.
"""

import json
import os

import cupy
from cupy._core import core
from cupy_backends.cuda.libs import nvrtc


def loaded() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split()[-1].rsplit("/", 1)[-1] for line in maps if "/nvidia/" in line}


for name in ("cublas", "cufft", "curand", "cusolver", "cusparse"):
    getattr(cupy.cuda, name)  # CuPy loads a library when its module is first used

KERNEL = """
#include <cupy/complex.cuh>
extern "C" __global__ void scale(const complex<float>* x, complex<float>* y, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i];
}
"""
include = os.path.join(os.path.dirname(cupy.__file__), "_core", "include")
program = nvrtc.createProgram(KERNEL, "scale.cu", (), ())
try:
    # sm_80 given outright: without a device CuPy cannot ask for one, which its own compile path does.
    nvrtc.compileProgram(program, ["-arch=sm_80", f"-I{include}", *core._get_cccl_include_options()])
    compiled = {"cubin_bytes": len(nvrtc.getCUBIN(program))}
except nvrtc.NVRTCError as exc:
    compiled = {"error": str(exc), "log": nvrtc.getProgramLog(program)[-2000:]}

print(json.dumps({"cupy": cupy.__version__, "compiled": compiled, "libraries": sorted(loaded())}))
