from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sorap2p.core.errors import LocalProtocolError, RemoteProtocolError
from sorap2p.learn.models import build_model
from sorap2p.learn.weights import ParamSpec, flatten_state_dict


def test_flatten_unflatten_round_trip_and_views() -> None:
    model = build_model("digits_cnn", seed=1)
    spec, vec = flatten_state_dict(model.state_dict())
    assert vec.dtype == torch.float32 and vec.shape == (spec.size,)
    assert spec.size == sum(p.numel() for p in model.state_dict().values())
    sd = spec.unflatten(vec)
    for name, t in model.state_dict().items():
        assert torch.equal(sd[name], t)
    # float32 entries are views: writing the vector changes them
    vec[0] = 123.0
    assert sd[spec.names[0]].reshape(-1)[0] == 123.0


def test_flatten_into_preallocated_row() -> None:
    model = build_model("digits_mlp", seed=2)
    spec = ParamSpec.from_module(model)
    matrix = torch.zeros(3, spec.size)
    spec.read_from(model, out=matrix[1])
    assert torch.equal(matrix[1], spec.read_from(model))
    assert torch.count_nonzero(matrix[0]) == 0
    with pytest.raises(LocalProtocolError):
        spec.flatten(model.state_dict(), out=torch.zeros(spec.size + 1))


def test_load_into_changes_model() -> None:
    a, b = build_model("digits_mlp", seed=1), build_model("digits_mlp", seed=2)
    spec = ParamSpec.from_module(a)
    spec.load_into(b, spec.read_from(a))
    assert torch.equal(spec.read_from(a), spec.read_from(b))


def test_mixed_dtypes_round_trip() -> None:
    sd = {
        "w": torch.randn(3, 2),
        "h": torch.randn(4).half(),
        "count": torch.tensor(12345, dtype=torch.int64),
    }
    spec, vec = flatten_state_dict(sd)
    back = spec.unflatten(vec)
    assert back["count"].dtype == torch.int64 and int(back["count"]) == 12345
    assert back["h"].dtype == torch.float16 and torch.equal(back["h"], sd["h"])
    assert ParamSpec.from_description(spec.describe()) == spec


def test_check_rejects_mismatch() -> None:
    spec = ParamSpec.from_state_dict({"a": torch.zeros(2, 2)})
    with pytest.raises(LocalProtocolError):
        spec.flatten({"a": torch.zeros(4)})
    with pytest.raises(LocalProtocolError):
        spec.flatten({"b": torch.zeros(2, 2)})


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=4),
    max_leaves=12,
)


@given(st.lists(json_like, max_size=5))
def test_from_description_rejects_garbage_with_remote_error(desc: list[object]) -> None:
    try:
        spec = ParamSpec.from_description(desc)  # type: ignore[arg-type]
    except RemoteProtocolError:
        return
    assert ParamSpec.from_description(spec.describe()) == spec
