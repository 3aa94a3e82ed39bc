"""Shared test setup: every test runs offline, and push/pull tests get a fake Hub on 127.0.0.1 (`hub_server.py`)."""

import functools
import os
import shutil
import tempfile

import pytest

from hub_server import FakeHub, block_non_loopback, run_against_hub

# Applied when pytest imports this file, i.e. before test modules import huggingface_hub / transformers / datasets /
# evaluate, which read these variables at import time. Cache and token variables would bypass the throwaway HF_HOME.
_TEST_HF_HOME = tempfile.mkdtemp(prefix="tagi-hf-tests-home-")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HOME": _TEST_HF_HOME,
}
_CACHES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN_PATH")
for _name in (*_CACHES, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
    os.environ.pop(_name, None)
os.environ.update(OFFLINE_ENV)


@pytest.fixture(scope="session", autouse=True)
def offline_hf_env():
    """Offline defaults for the whole session (set at import, see above); removes the throwaway HF_HOME at the end."""
    yield OFFLINE_ENV
    shutil.rmtree(_TEST_HF_HOME, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_models_on_one_thread():
    """torch on one intra-op thread for a whole module of tiny-model tests (`pytestmark = pytest.mark.usefixtures(
    "tiny_models_on_one_thread")`): thread start-up and synchronisation cost more than they save (tenfold on a busy
    machine)."""
    from tiny import one_thread

    with one_thread():
        yield


@pytest.fixture
def single_thread():
    """torch on one intra-op thread during the test (`tiny.one_thread`): for tests comparing two runs bit for bit."""
    from tiny import one_thread  # not at the top: tiny imports transformers, which must see the offline env first

    with one_thread():
        yield


@pytest.fixture
def hub_server():
    """A fresh, empty fake Hub for this test: `hub_server.url`, `.token`, and the records (`.requests`,
    `.calls(route)`, `.commits(repo_id)`, `.files(repo_id)`, `.lfs_uploads`); see `hub_server.FakeHub`."""
    with FakeHub() as server:
        yield server


@pytest.fixture(name="run_against_hub")
def run_against_hub_fixture(hub_server, tmp_path):
    """`run_against_hub(code, authenticated=True, env=None) -> stdout`: run a snippet in a subprocess whose
    HF_ENDPOINT is `hub_server` (the robust way: every library reads HF_ENDPOINT at import)."""
    return functools.partial(run_against_hub, hub_server, workdir=tmp_path / "subprocess")


@pytest.fixture
def hub_env(hub_server, monkeypatch, tmp_path):
    """Point huggingface_hub, transformers and peft *in this process* at `hub_server`, authenticated, with a fresh
    cache; sockets to any host but 127.0.0.1 are refused (and fail the test). Yields the server.

    Not covered: libraries that copy HF_ENDPOINT into their own constants at import (e.g. `datasets.config`): use
    `run_against_hub` for those.
    """
    import huggingface_hub.hf_api
    import transformers.utils.hub
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in hub_server.client_env(str(home)).items():
        monkeypatch.setenv(name, value)
    patched = {
        "ENDPOINT": hub_server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub_server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    # Clients built at import time keep their endpoint: `huggingface_hub.file_exists` & co. (used by peft) are methods
    # of `huggingface_hub.hf_api.api`, and transformers caches one `HfApi` for push_to_hub / snapshot_download.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub_server.url)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    monkeypatch.setattr(huggingface_hub.HfFileSystem, "_cache", {})  # fsspec reuses instances (and their endpoint)
    blocked = block_non_loopback(monkeypatch.setattr)
    yield hub_server
    assert not blocked, f"test tried to reach {sorted(set(blocked))}; only the fake Hub at {hub_server.url} is allowed"
