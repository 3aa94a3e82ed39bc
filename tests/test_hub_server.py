"""The fake Hub (`hub_server.py`) against the real clients: huggingface_hub, transformers and peft."""

import hashlib
import http.client
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import T5Config, T5ForConditionalGeneration

from tiny import FLOAT32_ROUNDING

REPO = "test-user/tiny"


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


def tiny_lora(seed: int = 0):
    """A LoRA on a tiny T5 with non-zero B, so the adapter changes the outputs."""
    config = LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"], r=4, init_lora_weights=False)
    torch.manual_seed(seed + 1)
    return get_peft_model(tiny_t5(seed), config).eval()


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, decoder_input_ids=input_ids).logits  # (batch, length, vocab)


def make_folder(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": json.dumps({"d_model": 32}).encode(),
        "README.md": b"---\nlicense: apache-2.0\ntags:\n- tagi\n---\n# Tiny\n",
        "model.safetensors": bytes(range(256)) * 40,
    }
    for name, content in files.items():
        (root / name).write_bytes(content)
    return files


def test_create_repo_exist_ok_and_conflict(hub_env):
    api = HfApi()
    first = api.create_repo(REPO, exist_ok=True)
    again = api.create_repo(REPO, exist_ok=True)
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo(REPO)
    assert error.value.response.status_code == 409
    assert first == again == f"{hub_env.url}/{REPO}"
    assert first.repo_id == REPO
    assert [call.status for call in hub_env.calls("create_repo")] == [200, 409, 409]
    assert list(hub_env.repos) == [("model", REPO)]
    assert hub_env.commits(REPO) == []


def test_upload_folder_is_one_commit_and_downloads_are_identical(hub_env, tmp_path):
    files = make_folder(tmp_path)
    api = HfApi()
    api.create_repo(REPO)
    info = api.upload_folder(folder_path=tmp_path, repo_id=REPO, commit_message="Add tiny model")

    [commit] = hub_env.commits(REPO)
    assert info.oid == commit.oid and commit.message == "Add tiny model"
    assert sorted(commit.added) == sorted(files) and commit.lfs_paths == ["model.safetensors"]
    sha256 = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert hub_env.lfs_uploads == [(REPO, sha256, len(files["model.safetensors"]))]
    assert len(hub_env.calls("lfs_upload")) == 1 and len(hub_env.calls("commit")) == 1
    assert {name: hub_env.files(REPO)[name] for name in files} == files

    for name, content in files.items():
        assert Path(hf_hub_download(REPO, name)).read_bytes() == content
    snapshot = Path(snapshot_download(REPO))
    assert {name: (snapshot / name).read_bytes() for name in files} == files
    assert (snapshot / ".gitattributes").exists()  # from the repo's initial commit


def test_unchanged_upload_makes_no_commit_and_no_lfs_upload(hub_env, tmp_path):
    make_folder(tmp_path)
    api = HfApi()
    api.create_repo(REPO)
    first = api.upload_folder(folder_path=tmp_path, repo_id=REPO)
    second = api.upload_folder(folder_path=tmp_path, repo_id=REPO)
    assert second.oid == first.oid
    assert len(hub_env.commits(REPO)) == 1 and len(hub_env.calls("lfs_upload")) == 1


def test_large_files_and_file_objects_go_through_lfs(hub_env):
    hub_env.lfs_threshold = 1000
    api = HfApi()
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"[" + b"0," * 600 + b"0]", path_in_repo="big.json", repo_id=REPO)
    api.upload_file(path_or_fileobj=io.BytesIO(b"weights" * 10), path_in_repo="w.safetensors", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="small.json", repo_id=REPO)
    assert [commit.lfs_paths for commit in hub_env.commits(REPO)] == [["big.json"], ["w.safetensors"], []]
    assert Path(hf_hub_download(REPO, "w.safetensors")).read_bytes() == b"weights" * 10
    assert [size for _, _, size in hub_env.lfs_uploads] == [1203, 70]


def test_keep_alive_connection_with_chunked_and_unread_bodies(hub_server):
    """Bodies are always read in full (chunked ones, those of refused requests): one connection serves them all."""
    hub_server.create_repo(REPO)
    content = b"chunked LFS object"
    oid = hashlib.sha256(content).hexdigest()
    connection = http.client.HTTPConnection(hub_server.url.removeprefix("http://"))
    connection.request("POST", "/api/repos/create", body=b'{"name": "x"}')  # no token: 401, body left unread
    assert connection.getresponse().read() and hub_server.requests[-1].status == 401
    sock = connection.sock
    connection.request("PUT", f"/__lfs/model/{REPO}/{oid}", body=iter([content[:7], content[7:]]), encode_chunked=True)
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"")
    connection.request("HEAD", f"/{REPO}/resolve/main/.gitattributes")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == b""
    assert int(response.headers["Content-Length"]) == len(hub_server.files(REPO)[".gitattributes"])
    assert response.headers["X-Repo-Commit"] == hub_server.repo(REPO).refs["main"]
    assert hub_server.repo(REPO).lfs_objects[oid] == content
    assert connection.sock is sock and sock is not None  # never reconnected
    connection.close()


def test_subfolders_tree_and_revisions(hub_env, tmp_path):
    files = make_folder(tmp_path)
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(folder_path=tmp_path, path_in_repo="adapters/task-a", repo_id=REPO)
    first_oid = hub_env.commits(REPO)[0].oid
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="adapters/task-a/config.json", repo_id=REPO)

    path = hf_hub_download(REPO, "model.safetensors", subfolder="adapters/task-a")
    assert Path(path).read_bytes() == files["model.safetensors"]
    old = hf_hub_download(REPO, "config.json", subfolder="adapters/task-a", revision=first_oid)
    assert Path(old).read_bytes() == files["config.json"]
    snapshot = Path(snapshot_download(REPO, allow_patterns="adapters/*"))
    assert (snapshot / "adapters/task-a/config.json").read_bytes() == b"v2"

    top = {entry.path for entry in api.list_repo_tree(REPO)}
    assert top == {".gitattributes", "adapters"}
    nested = {entry.path for entry in api.list_repo_tree(REPO, path_in_repo="adapters", recursive=True)}
    assert nested == {"adapters/task-a", *(f"adapters/task-a/{name}" for name in files)}
    assert [commit.title for commit in api.list_repo_commits(REPO)][
        0
    ] == "Upload adapters/task-a/config.json with huggingface_hub"
    assert [commit.added for commit in hub_env.commits(REPO)][1] == ["adapters/task-a/config.json"]


def test_missing_repo_revision_and_file_raise_hub_errors(hub_env):
    api = HfApi()
    api.create_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "config.json")
    assert not api.file_exists(REPO, "config.json") and api.file_exists(REPO, ".gitattributes")


def test_failed_commit_raises_and_changes_nothing(hub_env, tmp_path):
    make_folder(tmp_path)
    api = HfApi()
    api.create_repo(REPO)
    hub_env.fail_commits = True
    with pytest.raises(HfHubHTTPError) as error:
        api.upload_folder(folder_path=tmp_path, repo_id=REPO)
    assert error.value.response.status_code == 500
    assert hub_env.commits(REPO) == [] and set(hub_env.files(REPO)) == {".gitattributes"}
    assert [call.status for call in hub_env.calls("commit")] == [500]
    assert len(hub_env.calls("lfs_upload")) == 1  # the upload was attempted, the commit refused


def test_whoami_and_writes_need_the_token(hub_env, monkeypatch):
    assert HfApi().whoami()["name"] == hub_env.user
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as error:
        HfApi(token="hf_wrong").whoami()
    assert error.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(token=False).create_repo(REPO)
    assert error.value.response.status_code == 401 and hub_env.repos == {}
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(f"{hub_env.url}/api/whoami-v2")
    assert raw.value.code == 401 and "Authorization" in raw.value.headers["X-Error-Message"]

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(LocalTokenNotFoundError, match="Token is required"):
        HfApi().whoami()
    assert [call.status for call in hub_env.calls("whoami")] == [200, 401, 401]


def test_private_repo_needs_the_token(hub_env, tmp_path):
    files = make_folder(tmp_path)
    HfApi().create_repo(REPO, private=True)
    HfApi().upload_folder(folder_path=tmp_path, repo_id=REPO)
    assert Path(hf_hub_download(REPO, "model.safetensors")).read_bytes() == files["model.safetensors"]
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(REPO)


def test_branches_and_deletions(hub_env, tmp_path):
    files = make_folder(tmp_path)
    api = HfApi()
    api.create_repo(REPO)
    api.upload_folder(folder_path=tmp_path, repo_id=REPO)
    api.upload_folder(folder_path=tmp_path, path_in_repo="adapters/a", repo_id=REPO)
    api.create_branch(REPO, branch="dev")
    api.create_branch(REPO, branch="dev", exist_ok=True)
    api.delete_file("model.safetensors", repo_id=REPO, revision="dev")
    api.delete_folder("adapters", repo_id=REPO, revision="dev")
    with pytest.raises(EntryNotFoundError):
        api.delete_file("no-such-file", repo_id=REPO)

    assert set(hub_env.files(REPO, "dev")) == {".gitattributes", "README.md", "config.json"}
    assert set(hub_env.files(REPO)) == {".gitattributes", *files, *(f"adapters/a/{name}" for name in files)}
    assert [sorted(commit.deleted) for commit in hub_env.commits(REPO)[-2:]] == [
        ["model.safetensors"],
        sorted(f"adapters/a/{name}" for name in files),
    ]
    assert {ref.name for ref in api.list_repo_refs(REPO).branches} == {"main", "dev"}
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "model.safetensors", revision="dev")


def test_dataset_repo_and_pull_request(hub_env):
    api = HfApi()
    api.create_repo("test-user/data", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b'{"x": 1}\n', path_in_repo="train.jsonl", repo_id="test-user/data", repo_type="dataset"
    )
    path = hf_hub_download("test-user/data", "train.jsonl", repo_type="dataset")
    assert Path(path).read_bytes() == b'{"x": 1}\n'
    info = api.upload_file(
        path_or_fileobj=b"{}", path_in_repo="extra.json", repo_id="test-user/data", repo_type="dataset", create_pr=True
    )
    assert info.pr_revision == "refs/pr/1"
    assert "extra.json" in hub_env.files("test-user/data", "refs/pr/1", repo_type="dataset")
    assert "extra.json" not in hub_env.files("test-user/data", repo_type="dataset")


def test_t5_push_to_hub_then_from_pretrained_gives_identical_logits(hub_env):
    model = tiny_t5()
    model.push_to_hub(REPO)
    loaded = T5ForConditionalGeneration.from_pretrained(REPO)

    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())  # the bytes came back
    input_ids = torch.randint(0, 64, (2, 7))
    # weights over the mapped file: rounded otherwise on some CPUs (see tiny.FLOAT32_ROUNDING)
    torch.testing.assert_close(logits(loaded, input_ids), logits(model, input_ids), **FLOAT32_ROUNDING)
    [commit] = hub_env.commits(REPO)
    assert {"config.json", "model.safetensors", "README.md"} <= set(commit.added)
    assert commit.lfs_paths == ["model.safetensors"]
    assert not hub_env.calls("unhandled")


def test_peft_lora_push_to_hub_then_from_pretrained_gives_identical_outputs(hub_env):
    adapter = tiny_lora()
    adapter.push_to_hub(REPO)
    loaded = PeftModel.from_pretrained(tiny_t5(), REPO).eval()

    input_ids = torch.randint(0, 64, (2, 7))
    # Exact: in-memory bases, and PEFT copies the loaded LoRA weights into its own (aligned) parameters
    assert torch.equal(logits(loaded, input_ids), logits(adapter, input_ids))
    assert not torch.equal(logits(tiny_t5(), input_ids), logits(adapter, input_ids))  # the adapter matters
    [commit] = hub_env.commits(REPO)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(commit.added)
    assert commit.lfs_paths == ["adapter_model.safetensors"]
    assert not hub_env.calls("unhandled")


def test_peft_adapter_in_a_subfolder(hub_env, tmp_path):
    adapter = tiny_lora()
    adapter.save_pretrained(tmp_path)
    HfApi().create_repo(REPO)
    HfApi().upload_folder(folder_path=tmp_path, path_in_repo="adapters/task-a", repo_id=REPO)
    loaded = PeftModel.from_pretrained(tiny_t5(), REPO, subfolder="adapters/task-a").eval()

    input_ids = torch.randint(0, 64, (2, 7))
    assert torch.equal(logits(loaded, input_ids), logits(adapter, input_ids))  # exact, as in the test above
    assert hub_env.commits(REPO)[0].lfs_paths == ["adapters/task-a/adapter_model.safetensors"]


def test_run_against_hub_uses_a_subprocess_pointed_at_the_server(hub_server, run_against_hub):
    stdout = run_against_hub(
        """
        import os
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        api.create_repo("test-user/sub")
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="a/b.txt", repo_id="test-user/sub")
        print(open(hf_hub_download("test-user/sub", "b.txt", subfolder="a")).read(), os.environ["HF_ENDPOINT"])
        """
    )
    assert stdout.split() == ["hello", hub_server.url]
    assert hub_server.files("test-user/sub")["a/b.txt"] == b"hello"
    assert "HF_HUB_OFFLINE" not in run_against_hub("import os; print(sorted(os.environ))")


def test_run_against_hub_reports_failures_and_foreign_hosts(hub_server, run_against_hub):
    with pytest.raises(AssertionError, match="LocalTokenNotFoundError"):
        run_against_hub("from huggingface_hub import HfApi; HfApi().whoami()", authenticated=False)
    reach_out = """
        import socket
        try:
            socket.create_connection(("huggingface.co", 443), timeout=1)
        except OSError as error:
            print("refused:", error)
        """
    with pytest.raises(AssertionError, match=r"tried to reach \['huggingface.co'\]"):
        run_against_hub(reach_out)


@pytest.mark.slow
def test_t5_and_peft_round_trip_in_a_subprocess(hub_server, run_against_hub):
    """The env-var route that real users take (HF_ENDPOINT read at import); slow: the child imports torch."""
    stdout = run_against_hub(
        """
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import T5Config, T5ForConditionalGeneration

        def tiny():
            torch.manual_seed(0)
            config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                              decoder_start_token_id=0)
            return T5ForConditionalGeneration(config).eval()

        def logits(model):
            ids = torch.arange(14).reshape(2, 7)
            return model(input_ids=ids, decoder_input_ids=ids).logits

        tiny().push_to_hub("test-user/base")
        base = T5ForConditionalGeneration.from_pretrained("test-user/base")
        print(all(torch.equal(v, tiny().state_dict()[k]) for k, v in base.state_dict().items()))
        print(torch.allclose(logits(base), logits(tiny()), rtol=1e-5, atol=1e-5))
        config = LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"], r=4, init_lora_weights=False)
        adapter = get_peft_model(tiny(), config).eval()
        adapter.push_to_hub("test-user/lora")
        loaded = PeftModel.from_pretrained(base, "test-user/lora").eval()
        print(torch.allclose(logits(loaded), logits(adapter), rtol=1e-5, atol=1e-5))
        """
    )  # the loaded base's weights lie over the mapped file: equal up to rounding (tiny.FLOAT32_ROUNDING's bound)
    assert stdout.split() == ["True", "True", "True"]
    assert [len(hub_server.commits(repo)) for repo in ("test-user/base", "test-user/lora")] == [1, 1]


def test_tests_without_the_fake_hub_stay_offline():
    """Runs after the tests above: their patches are undone and the session-wide offline defaults hold."""
    import socket

    import transformers.utils.hub
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    assert constants.ENDPOINT == "https://huggingface.co" and "HF_TOKEN" not in os.environ
    assert constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"]) and "tagi-hf-tests-home-" in os.environ["HF_HOME"]
    assert transformers.utils.hub._hf_api is None or "127.0.0.1" not in transformers.utils.hub._hf_api.endpoint
    assert socket.socket.connect.__qualname__ == "socket.connect"  # the loopback guard is gone
    with pytest.raises((OfflineModeIsEnabled, EntryNotFoundError)):
        hf_hub_download("test-user/anything", "config.json")
