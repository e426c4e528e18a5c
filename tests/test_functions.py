"""Lambda functions, their execution roles and event source mappings: none on the local
target."""

import io
import zipfile

import pytest

from runner.backends.base import (
    HANDLER,
    KINDS,
    RUNTIME,
    BackendError,
    FunctionDescription,
    MappingDescription,
    code_sha256,
    mapping_name,
    split_mapping_name,
)
from runner.backends.local import LocalBackend

ACCOUNT = "123456789012"  # moto's account


def package(text: str) -> bytes:
    """A zip holding one module whose source is `text`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", text)
    return buffer.getvalue()


CODE = package("def handle(event, context):\n    return {}\n")

ETL = FunctionDescription(
    name="shop-etl",
    runtime=RUNTIME,
    handler=HANDLER,
    memory_mb=256,
    timeout_s=60,
    role="shop-etl-role",
    code_sha256=code_sha256(CODE),
    environment={"PIPELINE_LOG_FORMAT": "json"},
)

MAPPING = MappingDescription(
    function="shop-etl",
    stream="shop-in",
    batch_size=500,
    batching_window_s=5,
    parallelization=3,
    max_retries=10,
    max_record_age_s=7200,
    bisect_on_error=True,
    starting_position="TRIM_HORIZON",
)


def test_a_mapping_is_named_by_its_function_and_stream():
    assert MAPPING.name == mapping_name("shop-etl", "shop-in") == "shop-etl <- shop-in"
    assert split_mapping_name("shop-etl <- shop-in") == ("shop-etl", "shop-in")
    with pytest.raises(ValueError) as error:
        split_mapping_name("shop-etl")
    assert str(error.value) == "not a mapping name (FUNCTION <- STREAM): 'shop-etl'"


def test_code_sha256_is_lambdas_base64_of_the_sha256():
    assert code_sha256(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


# None on the local target


@pytest.mark.parametrize(
    "method, args",
    [
        ("describe_function", ("shop-etl",)),
        ("create_function", (ETL, CODE, "shop")),
        ("update_function_code", ("shop-etl", CODE)),
        ("update_function_configuration", (ETL,)),
        ("delete_function", ("shop-etl",)),
        ("function_role", ("shop-etl-role", "shop-etl", "shop-in", ["shop-out"])),
        ("describe_mapping", ("shop-etl", "shop-in")),
        ("create_mapping", (MAPPING, "shop")),
        ("update_mapping", (MAPPING,)),
        ("delete_mapping", ("shop-etl", "shop-in")),
    ],
)
def test_the_local_target_has_no_lambda_functions(tmp_path, method, args):
    backend = LocalBackend(tmp_path)
    assert backend.runs_functions is False

    with pytest.raises(BackendError) as error:
        getattr(backend, method)(*args)

    assert str(error.value) == "the local target has no Lambda functions"


def test_a_mapping_is_deleted_before_its_function_and_a_function_before_its_role_and_streams():
    order = KINDS.index
    assert order("event source mapping") < order("function") < order("role") < order("stream")
    assert KINDS[:2] == ("event source mapping", "function")  # first, before firehoses too
