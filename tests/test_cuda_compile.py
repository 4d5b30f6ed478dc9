"""Every ``cuda/*.cu`` compiles with NVRTC for sm_80 and sm_90, every variant, without a GPU.

CuPy's public compile entry points ask the driver for the device first; ``_NVRTCProgram`` does not, so it builds
cubins on machines with no GPU (CI).  A failure shows NVRTC's line-numbered log.
"""

from __future__ import annotations

from pathlib import Path

import pytest

cupy_backend = pytest.importorskip(
    "dendritic.kernels.cupy_backend", reason="CuPy not installed (pip install 'dendritic-bert[cuda]')"
)
compiler = pytest.importorskip("cupy.cuda.compiler", reason="CuPy not installed (pip install 'dendritic-bert[cuda]')")

SOURCES = sorted(cupy_backend.CUDA_DIR.glob("*.cu"))
# The variants each source must instantiate, by file name; a new .cu file must be listed here.
NAME_EXPRESSIONS = {spec["source"]: cupy_backend.kernel_names(kind) for kind, spec in cupy_backend.KERNELS.items()}


def _numbered(src: str) -> str:
    return "\n".join(f"{i:4d}  {line}" for i, line in enumerate(src.splitlines(), 1))


def test_sources_are_known():
    assert [p.name for p in SOURCES] == sorted(NAME_EXPRESSIONS), "every .cu needs its variants listed here"


def test_headers_found():
    assert cupy_backend.cuda_include_dirs(), "no cuda_fp16.h: install the nvidia-cuda-runtime wheel (cuda extra)"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: Path(p).name)
def test_nvrtc_compiles_every_variant(source: Path, arch: str):
    src = source.read_text()
    names = NAME_EXPRESSIONS[source.name]
    options = cupy_backend.nvrtc_options(arch)
    program = compiler._NVRTCProgram(src, source.name, name_expressions=names, method="cubin")
    try:
        cubin, mapping = program.compile(options)
    except compiler.CompileException as e:
        pytest.fail(f"NVRTC {' '.join(options)} failed on {source.name}:\n{e}\n--- source ---\n{_numbered(src)}")
    assert len(cubin) > 0
    assert set(mapping) == set(names) and all(mapping.values()), "a template variant was not instantiated"
