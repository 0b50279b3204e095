"""``mypy --strict`` on the package stays clean (the ``[tool.mypy]`` of pyproject.toml).

Checked against SQLAlchemy 2.1's annotations (the version the package is typed
for); skipped without mypy (it comes with the ``test`` extra) or on 2.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api", reason="mypy not installed (pip install -e '.[test]')")
    if tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2]) < (2, 1):
        pytest.skip(f"typed against SQLAlchemy 2.1, this is {sqlalchemy.__version__}")
    out, err, status = api.run([
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(tmp_path / "mypy_cache"),
        str(ROOT / "sqla_querycache"),
    ])  # fmt: skip
    assert status == 0, out + err
    assert "Success: no issues found" in out
