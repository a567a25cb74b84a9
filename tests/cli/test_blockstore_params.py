from __future__ import annotations

from pathlib import Path

import click
import pytest

from parsec_server.backend.config import (
    FileBlockstoreConfig,
    MockedBlockstoreConfig,
    PostgreSQLBlockstoreConfig,
    RaidBlockstoreConfig,
    S3BlockstoreConfig,
    StartupError,
    SwiftBlockstoreConfig,
)
from parsec_server.cli.blockstore_params import (
    FILE_FORMAT_ERROR,
    S3_FORMAT_ERROR,
    SWIFT_FORMAT_ERROR,
    check_blockstore_usable,
    parse_blockstore_params,
    split_blockstore_fields,
)


def _error_of(values: list[str]) -> str:
    with pytest.raises(click.BadParameter) as info:
        parse_blockstore_params(values)
    return info.value.message


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ("a:b:c", ["a", "b", "c"]),
        ("a\\:b:c", ["a:b", "c"]),
        ("a\\\\:b", ["a\\", "b"]),
        ("a\\x:b", ["a\\x", "b"]),
        ("a:b\\", ["a", "b\\"]),
        ("::", ["", "", ""]),
        ("http\\://h\\:1", ["http://h:1"]),
    ],
)
def test_fields_split_on_unescaped_colons_with_backslash_escapes(
    value: str, fields: list[str]
) -> None:
    assert split_blockstore_fields(value) == fields


@pytest.mark.parametrize("value", ["MOCKED", "mocked", "Mocked"])
def test_mocked_keyword_is_case_insensitive(value: str) -> None:
    assert parse_blockstore_params([value]) == MockedBlockstoreConfig()


@pytest.mark.parametrize("value", ["POSTGRESQL", "postgresql"])
def test_postgresql_keyword_is_case_insensitive(value: str) -> None:
    assert parse_blockstore_params([value]) == PostgreSQLBlockstoreConfig()


def test_s3_endpoint_from_the_installation_guide_gets_https() -> None:
    # The guide's shell text `s3:localhost\\:4566:...` reaches the program as below.
    config = parse_blockstore_params(["s3:localhost\\:4566:region1:parsec:user:password"])
    assert config == S3BlockstoreConfig(
        endpoint_url="https://localhost:4566",
        region="region1",
        bucket="parsec",
        key="user",
        secret="password",
    )


def test_s3_endpoint_keeps_an_explicit_http_scheme() -> None:
    config = parse_blockstore_params(["s3:http\\://localhost\\:4566:region1:parsec:user:pw"])
    assert isinstance(config, S3BlockstoreConfig)
    assert config.endpoint_url == "http://localhost:4566"


def test_s3_with_empty_endpoint_uses_the_aws_default() -> None:
    config = parse_blockstore_params(["S3::eu-west-1:bucket:key:secret"])
    assert config == S3BlockstoreConfig(
        endpoint_url=None, region="eu-west-1", bucket="bucket", key="key", secret="secret"
    )


def test_s3_secret_may_contain_escaped_colons_and_backslashes() -> None:
    config = parse_blockstore_params(["s3::r:b:k:se\\:cr\\\\et"])
    assert isinstance(config, S3BlockstoreConfig)
    assert config.secret == "se:cr\\et"


@pytest.mark.parametrize(
    "value", ["s3:region1:parsec:dummy-user:dummy-password", "s3:a:b:c:d:e:f", "s3"]
)
def test_s3_value_without_six_fields_is_refused(value: str) -> None:
    assert _error_of([value]) == S3_FORMAT_ERROR


def test_swift_auth_url_without_scheme_gets_https() -> None:
    config = parse_blockstore_params(["swift:auth.example.com/v3:tenant:container:user:pw"])
    assert config == SwiftBlockstoreConfig(
        auth_url="https://auth.example.com/v3",
        tenant="tenant",
        container="container",
        user="user",
        password="pw",
    )


def test_swift_auth_url_keeps_an_explicit_http_scheme() -> None:
    config = parse_blockstore_params(["SWIFT:http\\://keystone\\:5000/v3:t:c:u:p"])
    assert isinstance(config, SwiftBlockstoreConfig)
    assert config.auth_url == "http://keystone:5000/v3"


def test_swift_value_without_six_fields_is_refused() -> None:
    assert _error_of(["swift:auth:tenant:container:user"]) == SWIFT_FORMAT_ERROR


@pytest.mark.parametrize(
    ("value", "shown"),
    [("dummy", "dummy"), ("ftp:x", "ftp"), ("MOCKED:x", "MOCKED"), ("RAID1:0", "RAID1")],
)
def test_unknown_blockstore_type_is_refused(value: str, shown: str) -> None:
    assert _error_of([value]) == f"Invalid blockstore type `{shown}`"


def test_raid_nodes_are_ordered_by_index_and_may_mix_types() -> None:
    config = parse_blockstore_params(
        ["raid1:1:s3:minio\\:9000:us-east-1:parsec:key:secret", "RAID1:0:MOCKED"]
    )
    assert config == RaidBlockstoreConfig(
        mode="RAID1",
        nodes=(
            MockedBlockstoreConfig(),
            S3BlockstoreConfig(
                endpoint_url="https://minio:9000",
                region="us-east-1",
                bucket="parsec",
                key="key",
                secret="secret",
            ),
        ),
    )


@pytest.mark.parametrize("mode", ["RAID0", "RAID1", "RAID5"])
def test_raid_accepts_a_single_node_when_parsing(mode: str) -> None:
    config = parse_blockstore_params([f"{mode}:0:MOCKED"])
    assert config == RaidBlockstoreConfig(mode=mode, nodes=(MockedBlockstoreConfig(),))  # type: ignore[arg-type]


def test_raid_node_index_must_be_an_integer() -> None:
    assert _error_of(["RAID1:zero:MOCKED"]) == "Invalid node index `zero` (must be integer)"


def test_raid_missing_node_index_is_refused() -> None:
    error = _error_of(["RAID0:0:MOCKED", "RAID0:2:MOCKED"])
    assert error == "Missing node index `1` in RAID config"


def test_raid_duplicate_node_index_is_refused() -> None:
    error = _error_of(["RAID0:0:MOCKED", "RAID0:0:MOCKED"])
    assert error == "Multiple configuration for node index `0` in RAID config"


def test_raid_node_must_be_a_single_store() -> None:
    assert _error_of(["RAID1:0:RAID1:0:MOCKED"]) == "Invalid blockstore type `RAID1`"


def test_raid_node_value_errors_are_reported() -> None:
    assert _error_of(["RAID1:0:s3:x"]) == S3_FORMAT_ERROR


@pytest.mark.parametrize(
    ("values", "types"),
    [
        (["RAID1:0:MOCKED", "RAID0:1:MOCKED"], "RAID1/RAID0"),
        (["RAID1:0:MOCKED", "MOCKED"], "RAID1/MOCKED"),
        (["POSTGRESQL", "RAID5:0:MOCKED"], "POSTGRESQL/RAID5"),
    ],
)
def test_raid_modes_cannot_be_mixed(values: list[str], types: str) -> None:
    assert _error_of(values) == f"Multiple blockstore config with different types: {types}"


@pytest.mark.parametrize("values", [["MOCKED", "MOCKED"], ["MOCKED", "POSTGRESQL"]])
def test_several_plain_values_need_raid(values: list[str]) -> None:
    assert _error_of(values) == "Multiple blockstore configs only available for RAID mode"


def test_blockstore_errors_name_the_option_outside_click() -> None:
    with pytest.raises(click.BadParameter) as info:
        parse_blockstore_params(["dummy"])
    assert info.value.format_message() == (
        "Invalid value for '--blockstore': Invalid blockstore type `dummy`"
    )


def test_raid5_with_fewer_than_three_nodes_cannot_start() -> None:
    config = parse_blockstore_params(["RAID5:0:MOCKED", "RAID5:1:MOCKED"])
    with pytest.raises(StartupError, match=r"^RAID5 block store needs at least 3 nodes$"):
        check_blockstore_usable(config, "MOCKED")


def test_raid5_with_three_nodes_can_start() -> None:
    config = parse_blockstore_params([f"RAID5:{i}:MOCKED" for i in range(3)])
    check_blockstore_usable(config, "MOCKED")


@pytest.mark.parametrize("values", [["POSTGRESQL"], ["RAID1:0:MOCKED", "RAID1:1:POSTGRESQL"]])
def test_postgresql_blockstore_needs_a_postgresql_database(values: list[str]) -> None:
    config = parse_blockstore_params(values)
    with pytest.raises(StartupError, match=r"^PostgreSQL block store is not available$"):
        check_blockstore_usable(config, "MOCKED")
    check_blockstore_usable(config, "postgresql://db.example.com/parsec")


S3_NODE = "s3:https\\://minio.example.com\\:9000:region1:parsec:key:secret"
SWIFT_NODE = "swift:https\\://keystone.example.com/auth:tenant1:parsec:user:password"


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (["MOCKED", "POSTGRESQL", "POSTGRESQL"], "nodes 1 and 2 use the same storage "
         "(POSTGRESQL: the `block_data` table of the --db database)"),
        (["POSTGRESQL", "postgresql"], "nodes 0 and 1 use the same storage (POSTGRESQL"),
        # The same endpoint however written, other credentials: the same bucket.
        ([S3_NODE, "s3:MINIO.example.com\\:9000/:region2:parsec:other-key:other-secret"],
         "nodes 0 and 1 use the same storage (S3 bucket `parsec` at "
         "https://minio.example.com:9000)"),
        (["s3:s3.example.com:r:b:k:s", "s3:https\\://s3.example.com\\:443:r:b:k2:s2"],
         "nodes 0 and 1 use the same storage (S3 bucket `b` at https://s3.example.com)"),
        (["S3::eu-west-1:bucket:k:s", "MOCKED", "s3::eu-west-1:bucket:k2:s2"],
         "nodes 0 and 2 use the same storage "
         "(S3 bucket `bucket` at https://s3.eu-west-1.amazonaws.com)"),
        ([SWIFT_NODE, "swift:keystone.example.com/auth/:tenant1:parsec:other:pw"],
         "nodes 0 and 1 use the same storage (Swift container `parsec` of tenant `tenant1` "
         "at https://keystone.example.com/auth)"),
        ([S3_NODE, S3_NODE, S3_NODE], "nodes 0, 1 and 2 use the same storage"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["RAID0", "RAID1", "RAID5"])
def test_raid_nodes_sharing_a_storage_cannot_start(
    mode: str, nodes: list[str], message: str
) -> None:
    if mode == "RAID5" and len(nodes) < 3:
        nodes = [*nodes, "MOCKED"]
    config = parse_blockstore_params([f"{mode}:{i}:{node}" for i, node in enumerate(nodes)])
    with pytest.raises(StartupError) as info:
        check_blockstore_usable(config, "postgresql://db.example.com/parsec")
    error = str(info.value)
    assert error.startswith(f"{mode} {message}")
    assert error.endswith(": each node needs a storage of its own")
    assert "\n" not in error
    assert "secret" not in error and "password" not in error


@pytest.mark.parametrize(
    "nodes",
    [
        ["MOCKED", "MOCKED", "MOCKED"],  # each its own memory
        ["POSTGRESQL", "MOCKED", S3_NODE],
        [S3_NODE, "s3:https\\://minio.example.com\\:9000:region1:parsec-2:key:secret", "MOCKED"],
        [S3_NODE, "s3:https\\://minio.example.com\\:9001:region1:parsec:key:secret", "MOCKED"],
        [S3_NODE, "s3:https\\://minio2.example.com\\:9000:region1:parsec:key:secret", "MOCKED"],
        ["s3::eu-west-1:bucket:k:s", "s3::eu-west-3:bucket-2:k:s", "MOCKED"],
        [SWIFT_NODE, "swift:https\\://keystone.example.com/auth:tenant2:parsec:user:pw", "MOCKED"],
        [SWIFT_NODE, "swift:https\\://keystone.example.com/auth:tenant1:other:user:pw", "MOCKED"],
    ],
)
@pytest.mark.parametrize("mode", ["RAID0", "RAID1", "RAID5"])
def test_raid_nodes_on_distinct_storages_can_start(mode: str, nodes: list[str]) -> None:
    config = parse_blockstore_params([f"{mode}:{i}:{node}" for i, node in enumerate(nodes)])
    check_blockstore_usable(config, "postgresql://db.example.com/parsec")


def test_file_blockstore_is_an_absolute_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_blockstore_params(["file:/var/lib/parsec/blocks"]) == FileBlockstoreConfig(
        Path("/var/lib/parsec/blocks")
    )
    assert parse_blockstore_params(["FILE:blocks/"]) == FileBlockstoreConfig(tmp_path / "blocks")
    # The rest of the value is the directory, `:` included (escaped or not).
    assert parse_blockstore_params(["file:/srv/a:b\\:c"]) == FileBlockstoreConfig(
        Path("/srv/a:b:c")
    )


def test_file_blockstore_needs_a_directory() -> None:
    assert _error_of(["file:"]) == FILE_FORMAT_ERROR
    assert _error_of(["file"]) == FILE_FORMAT_ERROR


def test_raid_of_block_directories(tmp_path: Path) -> None:
    config = parse_blockstore_params(["RAID1:1:file:/disk2/blocks", "raid1:0:file:/disk1/blocks"])
    assert config == RaidBlockstoreConfig(
        mode="RAID1",
        nodes=(
            FileBlockstoreConfig(Path("/disk1/blocks")),
            FileBlockstoreConfig(Path("/disk2/blocks")),
        ),
    )
    check_blockstore_usable(config, "MOCKED")


def test_raid_nodes_in_one_directory_cannot_start(tmp_path: Path) -> None:
    (tmp_path / "blocks").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "blocks")
    values = [f"RAID1:0:file:{tmp_path}/blocks/", f"RAID1:1:file:{tmp_path}/link"]
    with pytest.raises(StartupError) as info:
        check_blockstore_usable(parse_blockstore_params(values), "MOCKED")
    assert str(info.value) == (
        f"RAID1 nodes 0 and 1 use the same storage (block directory `{tmp_path}/blocks`): "
        "each node needs a storage of its own"
    )
