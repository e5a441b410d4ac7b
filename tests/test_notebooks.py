"""The notebooks in notebooks/ run top to bottom on the CPU, offline, and draw every figure they promise.

Each notebook is executed from a fresh read of its file (the repository copy is never written) in a kernel
whose working directory is notebooks/, as for a reader who opens it there; the executed copy lands in pytest's
tmp_path for inspection. The stored notebooks must carry their figures too: readers on GitHub see those
without running anything.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat: pip install -e '.[dev]'")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
FIGURES = {
    "quickstart.ipynb": 1,
    "heads.ipynb": 2,
    "retrieval.ipynb": 3,
    "search.ipynb": 1,
}  # image/png outputs of each
SLOW = pytest.mark.slow  # every notebook trains or decodes for more than a few seconds on 2 CPU cores
CELL_TIMEOUT_S = 600  # generous: training cells on a slow, shared CI machine
# The tiny model's matrices are too small to gain from intra-op threads, and on a busy 2-core machine two
# OpenMP threads waiting for each other made the heads notebook's diagnostic 17x slower (202 s vs 12 s).
KERNEL_THREADS = "1"
MAX_STORED_KIB = 400  # the stored notebook with its figures, so the repository stays light
MIN_SIDE_PX = 100
MIN_PIXEL_STD = 8.0  # grey levels; a blank or one-colour image is near 0, a frame grid or chart is above 30
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # the kernel colours its tracebacks


def figures(nb: nbformat.NotebookNode) -> list[bytes]:
    """The decoded image/png outputs of every code cell, in order."""
    return [
        base64.b64decode(output["data"]["image/png"])
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]


def check_figure(png: bytes, where: str) -> None:
    """Fail unless ``png`` decodes to an image of at least MIN_SIDE_PX a side with visible content."""
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    height, width = grey.shape
    assert min(height, width) >= MIN_SIDE_PX, f"{where}: {width}x{height} px is too small for a figure"
    assert grey.std() > MIN_PIXEL_STD, f"{where}: the image is nearly uniform (grey std {grey.std():.1f})"


def check_figures(nb: nbformat.NotebookNode, name: str) -> None:
    """The notebook shows exactly its expected number of figures, each a real picture."""
    pngs = figures(nb)
    assert len(pngs) == FIGURES[name], f"{name}: {len(pngs)} figures, expected {FIGURES[name]}"
    for index, png in enumerate(pngs):
        check_figure(png, f"{name} figure {index + 1}")


def execute(name: str, out_dir: Path) -> nbformat.NotebookNode:
    """Run the notebook ``name`` in a fresh python3 kernel started in notebooks/; fail with the cell and error.

    The kernel (and the commands it runs) inherit this process's environment: set OMP_NUM_THREADS first.
    """
    nbclient = pytest.importorskip(
        "nbclient", reason="executing notebooks needs nbclient: pip install -e '.[dev]'"
    )
    pytest.importorskip("ipykernel", reason="executing notebooks needs ipykernel: pip install -e '.[dev]'")
    from nbclient.exceptions import CellControlSignal, DeadKernelError

    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's working directory
    )
    try:
        client.execute()
    except (CellControlSignal, DeadKernelError) as err:  # cell errors and timeouts name the cell's source
        pytest.fail(f"{name} failed:\n{ANSI_ESCAPE.sub('', str(err))}", pytrace=False)
    finally:
        nbformat.write(nb, out_dir / name)
    return nb


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    return buffer.getvalue()


def test_figure_check_rejects_blank_and_tiny_images():
    rng = np.random.default_rng(0)
    check_figure(png_bytes(rng.integers(0, 256, (120, 300, 3), dtype=np.uint8)), "noise")
    with pytest.raises(AssertionError, match="nearly uniform"):
        check_figure(png_bytes(np.full((120, 300, 3), 255, dtype=np.uint8)), "blank")
    with pytest.raises(AssertionError, match="too small"):
        check_figure(png_bytes(rng.integers(0, 256, (40, 300, 3), dtype=np.uint8)), "strip")


def test_every_notebook_is_listed():
    assert sorted(path.name for path in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_stored_notebook_carries_its_figures(name):
    path = NOTEBOOK_DIR / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    unexecuted = [
        i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and not cell.execution_count
    ]
    assert not unexecuted, f"{name}: code cells {unexecuted} have no outputs stored; re-run and save it"
    check_figures(nb, name)
    size_kib = path.stat().st_size / 1024
    assert size_kib <= MAX_STORED_KIB, (
        f"{name} is {size_kib:.0f} KiB (limit {MAX_STORED_KIB}): shrink its figures"
    )


@SLOW
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_draws_its_figures(name, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", KERNEL_THREADS)
    check_figures(execute(name, tmp_path), name)
