"""After a plain `pip install .` (no torch, matplotlib or fastapi), every command either works or
says in one line which extra to install: never a traceback."""

from __future__ import annotations

import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "01-paper-2.jpg")
BUNDLED = str(ROOT / "src" / "digitrec" / "pretrained")
# Top-level names the extras install: what a plain install lacks.
EXTRA_PACKAGES = {
    "torch",
    "torchgen",
    "functorch",
    "matplotlib",
    "mpl_toolkits",
    "pylab",
    "onnx",
    "fastapi",
    "starlette",
    "uvicorn",
    "multipart",
    "python_multipart",
}


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A new venv that sees this environment's packages except the extras' ones."""
    root = tmp_path_factory.mktemp("bare")
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    farm = root / "packages"
    farm.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.split("-")[0].split(".")[0].lower() not in EXTRA_PACKAGES:
            (farm / entry.name).symlink_to(entry)
    site = next((root / "venv" / "lib").glob("python*/site-packages"))
    # addsitedir, not a plain path: the farm's own .pth files (the editable install) must run.
    (site / "packages.pth").write_text(f"import site; site.addsitedir({str(farm)!r})\n")
    return root / "venv" / "bin" / "python"


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "digitrec", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_the_bare_venv_really_lacks_the_extras(bare_python, tmp_path):
    probe = (
        "import importlib.util as u; print([u.find_spec(m) is None for m in "
        "('torch', 'matplotlib', 'fastapi', 'numpy', 'onnxruntime')])"
    )
    done = subprocess.run([str(bare_python), "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "[True, True, True, False, False]"


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["models"], "train"),
        (["summary", "mlp"], "train"),
        (["train", "--subset", "100"], "train"),
        (["evaluate", BUNDLED], "train"),
        (["explain", EXAMPLE], "train"),
        (["export", BUNDLED], "train"),
        (["data", "preview"], "train"),
        (["demo"], "train"),
        (["bench", "train"], "train"),
        (["bench", "infer"], "train"),
        (["train-reader", "--steps", "1"], "train"),
        (["finetune", "--out", "tuned"], "train"),
        (["bench", "feedback"], "train"),
        (["recognize", EXAMPLE, "--plot", "plot.png"], "train"),
        (["recognize", EXAMPLE, "--backend", "torch"], "train"),
        (["serve"], "serve"),
        (["bench", "serve"], "serve"),
    ],
)
def test_a_command_that_needs_an_extra_names_it_in_one_line(bare_python, tmp_path, args, extra):
    done = run(bare_python, *args, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"pip install 'digitrec[{extra}]'" in done.stderr


def test_recognize_works_without_torch(bare_python, tmp_path):
    for model in ([], ["--model", BUNDLED]):  # the bundled ONNX file, and a run's model.onnx
        done = run(bare_python, "recognize", EXAMPLE, *model, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("01-paper-2.jpg: The number is probably a 2 (")


def test_a_bad_onnx_model_is_one_line_without_torch(bare_python, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    done = run(bare_python, "recognize", EXAMPLE, "--model", str(garbage), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "garbage.onnx" in done.stderr
    assert "Traceback" not in done.stderr
