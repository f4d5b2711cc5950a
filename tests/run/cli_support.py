"""Helpers shared by the command-line tests (``tests/run``)."""

import contextlib
import io
import json
from pathlib import Path

import matplotlib.image

from pyro_gen.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_png(path: Path, min_side: int) -> None:
    """``path`` is a non-blank PNG image whose sides are at least ``min_side`` pixels."""
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    image = matplotlib.image.imread(path)
    assert image.ndim in (2, 3) and min(image.shape[:2]) >= min_side, f"{path} has shape {image.shape}"
    assert image.std() > 0, f"{path} is blank"


def run_cli(argv) -> tuple[int, str]:
    """``main(argv)`` with its stdout captured (usable in module-scoped fixtures, where capsys is not)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def fails(argv, capsys) -> str:
    """Run ``main(argv)``, check it fails as a user error (status 2, one line on stderr, no traceback); return that line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"pyro-gen {argv[0]}: error: "), lines[0]
    return lines[0]


def assert_train_refused_before_writing(config, overrides, expected: str, tmp_path: Path, capsys) -> None:
    """``pyro-gen train CONFIG OVERRIDES`` fails with one line containing ``expected`` and writes no run directory."""
    message = fails(["train", config, *overrides, "--run-dir", tmp_path / "run"], capsys)
    assert expected in message
    assert not (tmp_path / "run").exists(), "the run directory was written before the config was checked"
