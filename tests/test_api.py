from __future__ import annotations

import pytest

import eoforge


def test_public_api_resolves() -> None:
    for name in eoforge.__all__:
        assert getattr(eoforge, name) is not None
    assert eoforge.run.__module__ == "eoforge.pipeline"
    assert issubclass(eoforge.InputError, ValueError) and issubclass(eoforge.DataError, OSError)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = eoforge.nope  # type: ignore[attr-defined]
