"""Standing checks on where data may be read: the ServerApp never loads a data file (only the in-process
baselines may), and imports flow one way (a ClientApp never imports the ServerApp)."""

import re

from tests.conftest import ROOT

DATA_LOADING = re.compile(r"prepare_shards|read_table|prepare=True|read_parquet|read_csv")


def test_server_app_imports_no_data_loader():
    offenders = [f"{path.name}: {line.strip()}" for path in sorted((ROOT / "server_app").glob("*.py"))
                 if path.name != "baselines.py"
                 for line in path.read_text().splitlines() if DATA_LOADING.search(line)]
    assert offenders == []


def test_client_app_never_imports_server_app():
    for path in (ROOT / "client_app").glob("*.py"):
        assert not re.search(r"^\s*(from|import) (server_app|launch)\b", path.read_text(), re.M), path.name
