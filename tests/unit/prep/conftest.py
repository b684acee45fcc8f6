import pytest

from ._helpers import write_pairs


@pytest.fixture
def raw_pairs(tmp_path):
    """Three MetaImage cases (Case00..Case02) of [6, 24, 24]."""
    return write_pairs(tmp_path / "raw")
