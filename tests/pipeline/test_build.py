"""End-to-end behaviour of `mmbert-data build` on generated hub-layout corpora."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from cli.data import app
from mixtures.recipe import load_recipe
from pipeline.build import Build
from pipeline.build_options import BuildOptions
from pipeline.dedup import rehydration_copies
from pipeline.lid import lid176_model_path
from pipeline.stats import print_stats
from pipeline.tokenizer import load_tokenizer
from tests.corpus import STOPWORDS, build_args, prose, small_hub, write_fineweb2, write_starcoder
from tests.fixtures import shard_rows

runner = CliRunner()
LID176 = lid176_model_path()  # the installed model, resolved before tests point the cache elsewhere


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(tmp_path / "cache"))


def build(hub: Path, out: Path, **overrides) -> tuple[Build, dict]:
    options = BuildOptions(
        recipe=load_recipe(),
        phase=overrides.pop("phase", "pretrain"),
        output=out,
        input_root=str(hub),
        tokenizer=f"sample:{hub}",
        tasks=overrides.pop("tasks", 2),
        **overrides,
    )
    plan = Build(options)
    return plan, plan.run()


def test_round_trip_stats_and_shards(tmp_path):
    hub = tmp_path / "hub"
    written = small_hub(hub)
    plan, stats = build(hub, tmp_path / "out", dedup=False)
    tokenizer = load_tokenizer(f"sample:{hub}")

    kept_texts = {}
    for stream in stats["streams"]:
        read, kept, heldout = (stream[f"documents_{n}"] for n in ("read", "kept", "heldout"))
        assert read == kept + sum(stream["drops"].values())
        assert kept - heldout == sum(s["documents"] for s in stream["shards"])
        assert heldout == sum(s["documents"] for s in stream["heldout"]) == 1  # small streams: one each
        assert stream["tokens"] == sum(s["tokens"] for s in stream["shards"])
        assert stream["heldout_tokens"] == sum(s["tokens"] for s in stream["heldout"])
        for shard in (*stream["shards"], *stream["heldout"]):
            path = plan.phase_dir / shard["path"]
            table = datasets.Dataset.from_file(str(path))  # memory-mapped, as users load it
            assert len(table) == shard["documents"]
            assert sum(len(ids) for ids in table["input_ids"]) == shard["tokens"]
            schema = pa.ipc.open_stream(path.read_bytes()).schema
            assert schema.metadata[b"mmbert.language"].decode() == stream["language"]
            assert schema.metadata[b"mmbert.tokenizer.sha256"].decode() == tokenizer.sha256
            for ids in table["input_ids"]:
                assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
                kept_texts.setdefault(stream["language"], set()).add(tokenizer.tokenizer.decode(ids[1:-1]))
    # a lossless tokenizer gives back exactly the documents that went in, held out or trained on
    assert set(written["fra_Latn"]) == kept_texts["fra_Latn"]
    assert set(written["rus_Cyrl"]) == kept_texts["rus_Cyrl"]
    assert set(written["eng_Latn"]) == kept_texts["eng_Latn"]
    assert set(written["zxx_Zyyy"]) == kept_texts["zxx_Zyyy"]
    sources = {(s["source"], s["language"]) for s in stats["streams"]}
    assert {
        ("fineweb2", "fra_Latn"),
        ("wikipedia", "fra_Latn"),
        ("dclm", "eng_Latn"),
        ("dolmino", "eng_Latn"),
        ("arxiv", "eng_Latn"),
        ("code", "zxx_Zyyy"),
    } <= sources
    assert json.loads((plan.phase_dir / "stats.json").read_text()) == stats
    assert not list(plan.phase_dir.rglob("*.tmp"))


def test_phase_languages_select_what_is_built(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)
    rng = random.Random(3)
    write_fineweb2(hub, "fao_Latn", [prose(rng, "eng_Latn") for _ in range(3)])  # a decay-only language
    _, pretrain = build(hub, tmp_path / "out", dedup=False)
    _, decay = build(hub, tmp_path / "out", phase="decay", dedup=False)
    assert "fao_Latn" not in {s["language"] for s in pretrain["streams"]}
    assert "fao_Latn" in {s["language"] for s in decay["streams"]}


def test_filter_configs_drive_thresholds_and_stop_words(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)
    configs = tmp_path / "configs"
    configs.mkdir()
    # French: stop words the generated text never uses -> Gopher's stop-word rule drops every document.
    (configs / "fra_Latn.yml").write_text("stopwords:\n- zzq\n- qqz\nlanguage_score: 0.5\n")
    # Russian: its real stop words pass; German: a score threshold above the documents' 0.95.
    (configs / "rus_Cyrl.yml").write_text("stopwords:\n" + "".join(f"- {w}\n" for w in STOPWORDS["rus_Cyrl"]))
    (configs / "deu_Latn.yml").write_text("language_score: 0.99\n")
    _, stats = build(hub, tmp_path / "out", dedup=False, filter_configs=str(configs), sources=("fineweb2",))
    by_language = {s["language"]: s for s in stats["streams"]}
    assert by_language["fra_Latn"]["documents_kept"] == 0
    assert by_language["fra_Latn"]["drops"] == {"gopher_enough_stop_words": 6}
    assert by_language["deu_Latn"]["drops"] == {"language_score": 6}
    assert (by_language["rus_Cyrl"]["documents_kept"], by_language["rus_Cyrl"]["documents_heldout"]) == (6, 1)


def test_bad_filter_config_is_named(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "fra_Latn.yml").write_text("dup_line_fraction: 0.2\n")
    result = runner.invoke(
        app,
        build_args(hub, tmp_path / "out", "--filter-configs", str(configs), "--no-dedup"),
    )
    assert result.exit_code == 1
    assert "fra_Latn.yml" in result.output and "dup_line_fraction" in result.output


def test_dedup_removes_injected_near_duplicates_per_language(tmp_path):
    hub = tmp_path / "hub"
    rng = random.Random(7)
    originals = [prose(rng, "fra_Latn", sentences=15) for _ in range(8)]
    near_copies = []
    for text in originals[:3]:  # three near-duplicates: a few words changed
        words = text.split(" ")
        for i in rng.sample(range(len(words)), 3):
            words[i] = "changé"
        near_copies.append(" ".join(words))
    write_fineweb2(hub, "fra_Latn", originals + near_copies)
    # the same text under another language label is a different stream: not a duplicate
    write_fineweb2(hub, "deu_Latn", originals[:2])
    no_configs = tmp_path / "configs"  # French text would fail German stop words
    no_configs.mkdir()
    _, stats = build(hub, tmp_path / "out", dedup=True, sources=("fineweb2",), filter_configs=str(no_configs))
    by_language = {s["language"]: s for s in stats["streams"]}
    assert by_language["fra_Latn"]["drops"] == {"near_duplicate": 3}
    assert (by_language["fra_Latn"]["documents_kept"], by_language["fra_Latn"]["documents_heldout"]) == (8, 1)
    assert (by_language["deu_Latn"]["documents_kept"], by_language["deu_Latn"]["documents_heldout"]) == (2, 1)


def test_code_is_built_as_written_and_only_its_exact_copy_is_dropped(tmp_path):
    """LID-176 would call a program English or drop it: code keeps its label; no quality filter judges
    it (its lines end without punctuation, its words are no words); MinHash drops the copy."""
    hub = tmp_path / "hub"
    code = small_hub(hub)["zxx_Zyyy"]
    write_starcoder(hub, "python", [*code, code[0]])
    lid = {"lid": "ft176", "lid_model": str(LID176)}
    plan, stats = build(hub, tmp_path / "out", sources=("code",), dedup=True, **lid)
    (stream,) = stats["streams"]
    assert (stream["source"], stream["language"], stream["drops"]) == (
        "code",
        "zxx_Zyyy",
        {"near_duplicate": 1},
    )
    tokenizer = load_tokenizer(f"sample:{hub}").tokenizer
    rows = shard_rows(plan.phase_dir)["zxx_Zyyy"] + shard_rows(plan.phase_dir, heldout=True)["zxx_Zyyy"]
    assert sorted(tokenizer.decode(ids[1:-1]) for _, ids in rows) == sorted(code)


def test_blank_line_style_never_decides_a_documents_fate(tmp_path):
    """The same article with CRLF, CR or whitespace-only blank lines is kept, and stored normalised."""
    hub = tmp_path / "hub"
    paragraphs = prose(random.Random(4), "fra_Latn", sentences=15).split("\n\n")
    styles = ["\n\n", "\n\n\n", "\n \n\t\n", "\r\n\r\n", "\r\r", "\n\u00a0\n"]
    write_fineweb2(hub, "fra_Latn", [style.join(paragraphs) for style in styles])
    plan, stats = build(hub, tmp_path / "out", dedup=False, sources=("fineweb2",), tasks=1)
    (stream,) = stats["streams"]
    assert (stream["documents_kept"], stream["documents_heldout"], stream["drops"]) == (len(styles), 1, {})
    tokenizer = load_tokenizer(f"sample:{hub}").tokenizer
    rows = shard_rows(plan.phase_dir)["fra_Latn"] + shard_rows(plan.phase_dir, heldout=True)["fra_Latn"]
    stored = {tokenizer.decode(ids[1:-1]) for _, ids in rows}
    assert stored == {"\n\n".join(paragraphs), "\n\n\n".join(paragraphs)}


def _han_text(rng: random.Random, characters: int, alphabet: list[str]) -> str:
    """Paragraphs of clauses of random characters, as long as asked: text no dictionary segments."""
    paragraphs, size = [], 0
    while size < characters:
        clauses = ["".join(rng.choices(alphabet, k=rng.randint(6, 15))) for _ in range(10)]
        paragraph = "".join(a + "，" + b + "。" for a, b in zip(clauses[::2], clauses[1::2], strict=True))
        paragraphs.append(paragraph)
        size += len(paragraph)
    return "\n".join(paragraphs)


def test_long_chinese_and_japanese_documents_are_not_dropped_for_their_word_count(tmp_path):
    """Segmenters fall back to single characters on text outside their dictionaries, so the word
    count of a long document can approach its character count: 120,000 characters (360 KB, far
    below the size limit) must not count as more than Gopher's 100,000 words."""
    hub = tmp_path / "hub"
    rng = random.Random(0)
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    kana = [chr(c) for c in range(0x3041, 0x3097)]
    write_fineweb2(hub, "cmn_Hani", [_han_text(rng, n, han) for n in (2_000, 120_000)])
    write_fineweb2(hub, "jpn_Jpan", [_han_text(rng, n, han + kana) for n in (2_000, 120_000)])
    _, stats = build(hub, tmp_path / "out", dedup=False, sources=("fineweb2",), tasks=1)
    assert {
        s["language"]: (s["documents_kept"], s["documents_heldout"], s["drops"]) for s in stats["streams"]
    } == {
        "cmn_Hani": (2, 1, {}),
        "jpn_Jpan": (2, 1, {}),
    }


def test_huge_document_is_dropped_with_a_reason_in_bounded_memory(tmp_path):
    hub = tmp_path / "hub"
    rng = random.Random(1)
    huge = (prose(rng, "fra_Latn", sentences=40) + "\n\n") * 8000  # ~20 MB
    assert len(huge.encode()) > 20_000_000
    write_fineweb2(hub, "fra_Latn", [prose(rng, "fra_Latn"), huge])
    env = {**os.environ, "MMBERT_DATA_CACHE": str(tmp_path / "cache")}
    # LID-176 sees the huge document too, before the size filter drops it
    lid = ("--lid", "ft176", "--lid-model", str(LID176))
    small_hub(tmp_path / "tokenizer-text")  # the sample tokenizer is trained apart from the huge document
    tokenizer = ("--tokenizer", f"sample:{tmp_path / 'tokenizer-text'}")
    args = build_args(hub, tmp_path / "out", "--sources", "fineweb2", "--tasks", "1", *lid, *tokenizer)
    # VmHWM is this process's own peak: ru_maxrss also counts the forking parent's (pytest's) size
    measure = (
        "import re, runpy, sys\nsys.argv = ['mmbert-data', *sys.argv[1:]]\ncode = 0\n"
        "try:\n    runpy.run_module('cli.data', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "status = open('/proc/self/status').read()\n"
        "print('peak_mb', int(re.search(r'VmHWM:\\s+(\\d+) kB', status)[1]) // 1024)\nsys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", measure, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.rsplit("peak_mb", 1)[1])
    assert peak_mb < 1024, f"peak memory {peak_mb} MB for a 20 MB document"
    stats = json.loads((tmp_path / "out" / "pretrain" / "stats.json").read_text())
    (stream,) = stats["streams"]
    assert stream["drops"] == {"too_large": 1}
    assert stream["documents_kept"] == 1


def test_the_console_shows_one_bar_per_stage_and_no_task_bars(tmp_path):
    """datatrove draws a tqdm bar per task and source (and one for the MinHash clusters); the
    command shows one line per stage instead, with its tasks, rate, time spent and ETA."""
    hub = tmp_path / "hub"
    small_hub(hub)
    args = build_args(hub, tmp_path / "out", "--tasks", "3", "--workers", "2")
    env = {**os.environ, "MMBERT_DATA_CACHE": str(tmp_path / "cache"), "COLUMNS": "120"}
    env.pop("TQDM_DISABLE", None)
    command = [sys.executable, "-m", "cli.data", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "it/s" not in done.stderr and "File progress" not in done.stderr
    assert "Reading dup files" not in done.stderr
    bars = [line for line in done.stderr.splitlines() if line.startswith("stage ")]
    stages = ["process", "buckets", "clusters", "write", "select", "heldout", "stats"]
    assert [line.split()[1] for line in bars] == stages
    finished = re.compile(r" (\d+)/\1 tasks, [\d.]+/(s|min), \d+:\d\d:\d\d, ETA 0:00:00$")
    assert all(finished.search(bar) for bar in bars), bars
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert "stage process: done before (3 tasks)" in again.stderr


def test_keep_removed_writes_dropped_documents(tmp_path):
    hub = tmp_path / "hub"
    rng = random.Random(2)
    write_fineweb2(hub, "fra_Latn", [prose(rng, "fra_Latn"), "Trop court."])
    plan, stats = build(hub, tmp_path / "out", dedup=False, sources=("fineweb2",), keep_removed=True, tasks=1)
    removed = [
        json.loads(line)
        for p in (plan.phase_dir / "removed").rglob("*.jsonl.gz")
        for line in gzip.decompress(p.read_bytes()).splitlines()
    ]
    assert [r["text"] for r in removed] == ["Trop court."]
    reason = removed[0]["metadata"]["filter_reason"]
    assert stats["streams"][0]["drops"] == {reason: 1}


def test_dry_run_prints_graph_and_files(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)
    result = runner.invoke(
        app,
        build_args(hub, tmp_path / "out", "--dry-run"),
    )
    assert result.exit_code == 0, result.output
    assert "stage process" in result.output and "stage clusters" in result.output
    assert "data/fra_Latn/train/000_00000.parquet" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_build_then_stats(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)
    rng = random.Random(5)  # Serbian in both of its scripts: one language, two FineWeb2 subsets
    write_fineweb2(hub, "srp_Cyrl", [prose(rng, "rus_Cyrl") for _ in range(3)])
    write_fineweb2(hub, "srp_Latn", [prose(rng, "deu_Latn") for _ in range(2)])
    phase = tmp_path / "out" / "pretrain"
    args = build_args(hub, tmp_path / "out", "--languages", "fra,srp,eng", "--no-dedup")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 languages (4 language-script subsets)" in result.output
    shown = runner.invoke(app, ["stats", str(phase)])
    assert shown.exit_code == 0
    assert "fra_Latn" in shown.output and "rus_Cyrl" not in shown.output
    # the shared cache holds assets only: no record of this build for another project to pick up
    assert {path.name for path in (tmp_path / "cache").iterdir()} <= {"tokenizers", "jieba.cache"}

    stats = json.loads((phase / "stats.json").read_text())
    largest = sorted(stats["streams"], key=lambda s: -s["tokens"])
    top = runner.invoke(app, ["stats", str(phase), "--top", "2", "--json"])
    assert top.exit_code == 0, top.output
    summary = json.loads(top.stdout)
    assert [(r["source"], r["language"], r["tokens"]) for r in summary["rows"]] == [
        (s["source"], s["language"], s["tokens"]) for s in largest[:2]
    ]
    assert summary["streams"] == len(stats["streams"]) and summary["totals"]["tokens"] == sum(
        s["tokens"] for s in stats["streams"]
    )
    assert (summary["languages"], summary["language_script_subsets"]) == (3, 4)
    table = runner.invoke(app, ["stats", str(phase), "--top", "1"])
    rows = [line for line in table.output.splitlines() if "│" in line and "_" in line]
    assert len(rows) == 1 and largest[0]["source"] in rows[0] and largest[0]["language"] in rows[0]
    assert f"{len(stats['streams']) - 1} more" in table.output


def test_a_shard_damaged_after_the_build_stops_its_rerun_and_the_mixture(tmp_path):
    """A rerun skips finished tasks; their shards are checked against stats.json all the same."""
    hub, out = tmp_path / "hub", tmp_path / "out"
    small_hub(hub)
    assert runner.invoke(app, build_args(hub, out, "--no-dedup", "--tasks", "2")).exit_code == 0
    shard = next(iter(sorted((out / "pretrain").rglob("*.arrow"))))
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:100])
    expected = (
        f"error: {out / 'pretrain'}: changed shard: {shard.relative_to(out / 'pretrain')} has 100 bytes, "
        f"stats.json records {size:,}; the build's shards changed after it wrote them: build the phase "
        "again with --overwrite"
    )
    rerun = runner.invoke(app, build_args(hub, out, "--no-dedup", "--tasks", "2"))
    assert rerun.exit_code == 1 and rerun.output.strip().splitlines()[-1] == expected
    mixture = ["mixture", "--stats", str(out / "pretrain"), "-o", str(tmp_path / "m.json")]
    compiled = runner.invoke(app, mixture)
    assert compiled.exit_code == 1 and compiled.output.strip().splitlines()[-1] == expected
    assert not (tmp_path / "m.json").exists()
    rebuilt = runner.invoke(app, build_args(hub, out, "--no-dedup", "--tasks", "2", "--overwrite"))
    assert rebuilt.exit_code == 0 and shard.stat().st_size == size


def test_a_rerun_with_other_settings_is_refused_and_overwrite_rebuilds_cleanly(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)
    write_fineweb2(hub, "fao_Latn", ["Ein føroysk grein."])  # input for the language added below, never read
    out, phase = tmp_path / "out", tmp_path / "out" / "pretrain"
    assert runner.invoke(app, build_args(hub, out, "--no-dedup", "--tasks", "2")).exit_code == 0
    first = (phase / "stats.json").read_bytes()
    again = runner.invoke(app, build_args(hub, out, "--no-dedup", "--tasks", "2"))  # the same: resumes
    assert again.exit_code == 0 and "stage process: done before (2 tasks)" in again.output
    changed = ("--no-dedup", "--tasks", "1", "--languages", "fra,eng,fao", "--lid", "ft176")
    refused = runner.invoke(app, build_args(hub, out, *changed))
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert f"error: {phase} was built with other settings (" in message
    # a list as what was added to and removed from the one the phase was built with
    changes = "languages: 1 added (fao), 59 removed (afr, arb, azj, ben, bul, ces, cmn, dan, ...)"
    assert f"({changes}; lid: trust -> ft176; tasks: 2 -> 1);" in message
    assert "pass --overwrite to rebuild it from scratch" in message
    assert (phase / "stats.json").read_bytes() == first  # nothing was touched

    changed = ("--no-dedup", "--tasks", "1", "--languages", "fra,eng")
    rebuilt = runner.invoke(app, build_args(hub, out, *changed, "--overwrite"))
    assert rebuilt.exit_code == 0, rebuilt.output
    stats = json.loads((phase / "stats.json").read_text())
    assert {s["language"] for s in stats["streams"]} == {"fra_Latn", "eng_Latn"}
    # only the new build's shards and completions are left: nothing of the first one mixes in
    listed = sorted(shard["path"] for stream in stats["streams"] for shard in stream["shards"])
    assert sorted(str(p.relative_to(phase)) for p in phase.glob("*/*/*.arrow")) == listed
    assert sorted(p.name for p in (phase / "_logs" / "process" / "completions").iterdir()) == ["00000"]
    recorded = json.loads((phase / "build.json").read_text())["settings"]
    assert recorded["languages"] == ["fra", "eng"] and recorded["tasks"] == 1
    # a directory of files without recorded settings is not resumed blindly
    (phase / "build.json").unlink()
    unknown = runner.invoke(app, build_args(hub, out, *changed))
    assert unknown.exit_code == 1 and "holds files but no build.json" in unknown.output


def test_a_second_build_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)
    out, phase = tmp_path / "out", tmp_path / "out" / "pretrain"
    phase.mkdir(parents=True)
    hold = (
        "import sys, time\nfrom pathlib import Path\nfrom pipeline.guard import BuildLock\n"
        "with BuildLock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(phase)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        refused = runner.invoke(app, build_args(hub, out, "--no-dedup"))
        assert refused.exit_code == 1
        assert f"{phase} is being written by another build (pid {holder.pid} on " in refused.output
        assert sorted(p.name for p in phase.iterdir()) == ["build.lock"]
    finally:
        holder.kill()  # it dies holding the lock, and its lock file stays behind
        holder.wait()
    assert json.loads((phase / "build.lock").read_text())["pid"] == holder.pid
    taken = runner.invoke(app, build_args(hub, out, "--no-dedup"))
    assert taken.exit_code == 0, taken.output
    assert f"note: took over {phase / 'build.lock'} from pid {holder.pid} on " in taken.output
    assert (phase / "stats.json").exists() and not (phase / "build.lock").exists()


def test_inspect_prints_a_shards_metadata_and_decoded_documents(tmp_path):
    hub = tmp_path / "hub"
    written = small_hub(hub)
    plan, stats = build(hub, tmp_path / "out", dedup=False, sources=("fineweb2",), tasks=1)
    shard = plan.phase_dir / "fineweb2" / "fra_Latn" / "00000-0000.arrow"  # the write stage's shard
    result = runner.invoke(app, ["inspect", str(shard), "-n", "2", "--chars", "100000"])
    assert result.exit_code == 0, result.output
    sha256 = load_tokenizer(f"sample:{hub}").sha256
    for line in (f"tokenizer.sha256: {sha256}", "source: fineweb2", "language: fra_Latn", "phase: pretrain"):
        assert f"  {line}\n" in result.output
    (entry,) = (
        e for s in stats["streams"] for e in s["shards"] if e["path"] == "fineweb2/fra_Latn/00000-0000.arrow"
    )
    assert f"documents: {entry['documents']}, tokens: " in result.output
    table = datasets.Dataset.from_file(str(shard))
    for doc_id in table["id"][:2]:
        assert f"id {doc_id} (" in result.output
    assert f"id {table['id'][2]} (" not in result.output
    shown = [text for text in written["fra_Latn"] if text in result.output]
    assert len(shown) == 2  # decoded back to the documents that went in
    bad = runner.invoke(app, ["inspect", str(plan.phase_dir / "stats.json")])
    assert bad.exit_code == 1 and "not a token shard" in bad.output and len(bad.output.splitlines()) == 1


def test_slurm_executor_chains_the_same_stages(tmp_path):
    """Without a cluster here, check the job graph a Slurm build would submit."""
    from datatrove.executor import SlurmPipelineExecutor

    from pipeline.build_options import SlurmOptions

    options = BuildOptions(
        recipe=load_recipe(),
        phase="decay",
        output=tmp_path / "out",
        tasks=8,
        executor="slurm",
        slurm=SlurmOptions(partition="cpu-long", time="12:00:00"),
    )
    stages = Build(options).executors({"name": "tok", "sha256": "0" * 64})
    assert list(stages) == ["process", "buckets", "clusters", "write", "select", "heldout", "stats"]
    chain = list(stages.values())
    assert all(isinstance(e, SlurmPipelineExecutor) for e in chain)
    assert [e.tasks for e in chain] == [8, 14, 1, 8, 1, 8, 1]
    assert all(later.depends is earlier for earlier, later in zip(chain, chain[1:], strict=False))
    assert {e.partition for e in chain} == {"cpu-long"}
    assert chain[-1].logging_dir.path.endswith("decay/_logs/stats")


@pytest.mark.parametrize("dedup", [False, True])
def test_rehydrated_counts_add_up(tmp_path, dedup):
    hub = tmp_path / "hub"
    rng = random.Random(4)
    path = write_fineweb2(hub, "fra_Latn", [prose(rng, "fra_Latn") for _ in range(4)] + ["Trop court."])
    table = pq.read_table(path)
    sizes = pa.array([1, 2, 3, 100, 5], pa.int64())  # FineWeb2 repeats these 1, 2, 3, 8 times
    column = table.schema.get_field_index("minhash_cluster_size")
    pq.write_table(table.set_column(column, "minhash_cluster_size", sizes), path)
    plan, stats = build(hub, tmp_path / "out", dedup=dedup, rehydrate=True, sources=("fineweb2",), tasks=1)
    (stream,) = stats["streams"]
    assert stream["documents_read"] == 5
    assert sum(stream["drops"].values()) == 1  # the short one
    assert (stream["documents_kept"], stream["documents_heldout"]) == (4, 1)
    # the held-out document is not repeated: its copies would be trained on
    (heldout,) = (doc_id for doc_id, _ in shard_rows(plan.phase_dir, heldout=True)["fra_Latn"])
    ids = [f"fineweb2/{doc_id}" for doc_id in table["id"].to_pylist()[:4]]  # the fifth is dropped
    copies = {doc_id: rehydration_copies(size) - 1 for doc_id, size in zip(ids, [1, 2, 3, 100], strict=True)}
    repeated = sum(n for doc_id, n in copies.items() if doc_id != heldout)
    assert stream["documents_repeated"] == repeated
    training = [doc_id for doc_id, _ in shard_rows(plan.phase_dir)["fra_Latn"]]
    assert len(training) == sum(shard["documents"] for shard in stream["shards"]) == 3 + repeated
    assert not any(doc_id.startswith(heldout) for doc_id in training)
    shown = io.StringIO()
    print_stats(stats, Console(file=shown, width=200))
    header, row = (line for line in shown.getvalue().splitlines() if "fra_Latn" in line or "read" in line)
    assert [cell.strip() for cell in header.split("┃")[3:7]] == ["read", "kept", "held out", "repeated"]
    assert [cell.strip() for cell in row.split("│")[3:7]] == ["5", "4", "1", str(repeated)]
