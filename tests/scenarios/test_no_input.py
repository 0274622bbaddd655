"""A build that cannot read its input (a typo, a missing mirror, no hub) stops at once in one line
that names where it looked and the way out; user errors keep their traceback in the task log."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import zstandard
from typer.testing import CliRunner

from cli.data import app
from tests.corpus import DCLM, STARCODER, build_args, small_hub, write_dolmino

runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def hub(tmp_path) -> Path:
    small_hub(tmp_path / "hub")
    return tmp_path / "hub"


def error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_a_typo_in_input_root_stops_naming_it(hub, tmp_path):
    result = runner.invoke(app, build_args(Path(f"{hub}x"), tmp_path / "out"))
    assert result.exit_code == 1
    assert error_lines(result.output) == [f"error: --input-root {hub}x is not a directory"]
    assert not (tmp_path / "out").exists()


def test_a_mistyped_source_is_one_line_with_the_near_miss(hub, tmp_path):
    result = runner.invoke(app, build_args(hub, tmp_path / "out", "--sources", "fineweb2,wikipeda"))
    assert result.exit_code == 1
    assert error_lines(result.output) == [
        "error: unknown source(s) ['wikipeda'] (did you mean wikipedia?); "
        "the recipe has fineweb2, dclm, dolmino, wikipedia, arxiv, code"
    ]


@pytest.mark.parametrize(("source", "where"), [("dclm", DCLM), ("code", STARCODER)])
def test_a_source_without_files_stops_naming_the_path_and_the_mapping(hub, tmp_path, source, where):
    shutil.rmtree(hub / where)
    result = runner.invoke(app, build_args(hub, tmp_path / "out"))
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert line.startswith(f"error: source {source}: no input files under {hub}/{where} ")
    assert f"--input-root {hub} maps hf://{where} there" in line
    assert "mmbert-data download" in line and "--sources" in line
    # a source the selection does not ask for may be missing: neither English nor code is asked for here
    result = runner.invoke(app, build_args(hub, tmp_path / "out", "--languages", "fra", "--no-dedup"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("languages", "message"),
    [
        ("fra,frr", "--languages 'frr': no input file in fineweb2, wikipedia (near misses: fra, fra_Latn)"),
        ("xho", "--languages 'xho': no input file in fineweb2, wikipedia (it holds deu_Latn, fra, "),
        (
            "fra_Latm",
            "language selection entry 'fra_Latm': unknown ISO 15924 script 'Latm' (did you mean Latn",
        ),
    ],
)
def test_languages_naming_nothing_that_exists_list_the_near_misses(hub, tmp_path, languages, message):
    result = runner.invoke(app, build_args(hub, tmp_path / "out", "--languages", languages))
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert line.startswith(f"error: {message}")
    assert not (tmp_path / "out" / "pretrain" / "stats.json").exists()


def test_bad_input_in_fail_mode_is_one_line_and_its_traceback_is_in_the_task_log(tmp_path):
    hub = tmp_path / "hub"
    dolmino = write_dolmino(hub, "flan", ["A first record.", "A second record."])
    lines = zstandard.decompress(dolmino.read_bytes()).splitlines(keepends=True)
    lines.insert(1, b'{"id": "bad", "text": "caf\xe9 au lait"}\n')  # invalid UTF-8 on line 2
    dolmino.write_bytes(zstandard.compress(b"".join(lines)))
    args = build_args(hub, tmp_path / "out", "--tasks", "1", "--sources", "dolmino", "--on-error", "fail")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert "data/flan/part-0000.json.zst:2: invalid UTF-8" in line
    (log,) = (tmp_path / "out" / "pretrain" / "_logs" / "process" / "logs").glob("task_*.log")
    assert "Traceback" in log.read_text() and "InputError" in log.read_text()
    verbose = runner.invoke(app, [*args, "--verbose"])
    assert verbose.exit_code == 1 and "Traceback" in verbose.output


@pytest.mark.parametrize("kind", ["a file", "inside a file"])
def test_an_output_that_is_no_directory_is_one_line(hub, tmp_path, kind):
    (tmp_path / "file").write_text("not a directory")
    output = tmp_path / "file" if kind == "a file" else tmp_path / "file" / "out"
    result = runner.invoke(app, build_args(hub, output, "--no-dedup"))
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert line.startswith(f"error: --output {output}: cannot write {output}/pretrain (")


def test_a_tokenizer_that_cannot_be_loaded_leaves_no_output(hub, tmp_path):
    args = build_args(hub, tmp_path / "out", "--no-dedup")
    args[args.index("--tokenizer") + 1] = str(tmp_path / "missing" / "tokenizer.json")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert error_lines(result.output) == [
        f"error: tokenizer file {tmp_path}/missing/tokenizer.json does not exist"
    ]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def hub_offline(monkeypatch):
    """HF_HUB_OFFLINE=1, as huggingface_hub reads it when imported."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_unreachable(monkeypatch):
    """No name resolves, as on a machine without a network (the hub is not told to stay offline)."""
    import huggingface_hub.constants

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)


@pytest.fixture
def hub_refusing(monkeypatch):
    """The hub's endpoint on a local port nobody listens on: every connection is refused at once,
    as by a firewall, and nothing leaves the machine."""
    import huggingface_hub.constants

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: the port stays closed and ours
    endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    yield endpoint
    closed.close()


def test_a_hub_tokenizer_with_the_hub_refusing_fails_at_once(
    hub, tmp_path, monkeypatch, hub_refusing, caplog
):
    """No "Retrying in Ns" for ~25 s first: the hub is asked once, before any download."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    args = build_args(hub, tmp_path / "out", "--no-dedup", "--tokenizer", "jhu-clsp/mmBERT-base")
    started = time.monotonic()
    result = runner.invoke(app, args)
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert line.startswith(
        "error: loading tokenizer jhu-clsp/mmBERT-base (not in the local Hugging Face cache)"
    )
    assert f"{hub_refusing} cannot be reached" in line and "--tokenizer PATH" in line
    assert "Retrying" not in caplog.text + result.output


@pytest.mark.parametrize("hub_state", ["hub_offline", "hub_unreachable"])
def test_hub_sources_without_the_hub_fail_fast_naming_the_mirror(tmp_path, hub_state, request):
    request.getfixturevalue(hub_state)
    started = time.monotonic()
    result = runner.invoke(app, ["build", "--phase", "pretrain", "--output", str(tmp_path / "out")])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert line.startswith("error: reading fineweb2 (hf://datasets/HuggingFaceFW/fineweb-2), dclm (")
    assert "needs the Hugging Face hub, but" in line
    assert "HF_HUB_OFFLINE is set" in line if hub_state == "hub_offline" else "cannot be reached" in line
    assert "`mmbert-data download --phase pretrain --output DIR`" in line and "--input-root DIR" in line
    download = runner.invoke(app, ["download", "--phase", "pretrain", "--to", str(tmp_path / "mirror")])
    assert download.exit_code == 1
    (line,) = error_lines(download.output)
    assert "mmbert-data download" not in line, "the download itself is what cannot run here"
    assert "run this download on a machine that reaches the hub" in line and "--input-root DIR" in line
    assert not (tmp_path / "mirror").exists()


def test_a_hub_tokenizer_not_in_the_cache_offline_asks_for_a_path(hub, tmp_path, monkeypatch, hub_offline):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    args = build_args(hub, tmp_path / "out", "--no-dedup", "--tokenizer", "jhu-clsp/mmBERT-base")
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert line.startswith(
        "error: loading tokenizer jhu-clsp/mmBERT-base (not in the local Hugging Face cache)"
    )
    assert "HF_HUB_OFFLINE is set" in line and "--tokenizer PATH" in line


def test_glotlid_not_in_the_cache_without_the_hub_asks_for_a_path(
    hub, tmp_path, monkeypatch, hub_unreachable
):
    monkeypatch.setattr("huggingface_hub.utils._cache_assets.HF_ASSETS_CACHE", str(tmp_path / "assets"))
    result = runner.invoke(app, build_args(hub, tmp_path / "out", "--no-dedup", "--lid", "glotlid"))
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert line.startswith("error: loading GlotLID (cis-lmu/glotlid model_v3.bin, not in datatrove's cache)")
    assert "cannot be reached" in line and "--lid-model PATH" in line
