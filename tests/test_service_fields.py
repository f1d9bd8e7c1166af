"""Form fields of the service parsed without the framework (`service.searching`): what the type
checker found (issue 24)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from fashionrec_onnx.service.errors import ServiceError  # noqa: E402
from fashionrec_onnx.service.searching import parse_json_field  # noqa: E402


def test_valid_json_that_python_refuses_is_a_bad_parameter_not_a_crash():
    """An integer of 5,000 digits is JSON, but Python refuses to convert it (ValueError without
    the position a JSONDecodeError has): the caller gets a 422, not a 500."""
    with pytest.raises(ServiceError) as refused:
        parse_json_field("negative", "[" + "1" * 5000 + "]", list)
    assert refused.value.status == 422
    assert refused.value.error == "bad_parameter"
    assert "negative" in refused.value.detail


def test_malformed_json_names_the_position():
    with pytest.raises(ServiceError) as refused:
        parse_json_field("filter", '{"category": ', dict)
    assert refused.value.status == 422
    assert "at character 13" in refused.value.detail
