"""Benchmark: `mmbert-data build` (LID + filters + tokenize + write) against a stock datatrove pipeline.

Both run on the same generated FineWeb2-layout corpus (>= 50 MB, sentences of the
bundled sample's real documents recombined per language), one worker each, with
the same tokenizer, fastText LID-176 and FineWeb2's filters, configs and word tokenizers:

* ours:  `Build` with --lid ft176, FineWeb2's configs (the default), no dedup, one task;
* stock: FineWeb2's filtering as fineweb-2-pipeline.py runs it: ParquetReader ->
  LanguageFilter(ft176, label_only) -> JsonlWriter per label; then per label JsonlReader ->
  LambdaFilter(language_score >= the config's) -> GopherRepetitionFilter -> FineWebQualityFilter ->
  GopherQualityFilter (FineWeb2's settings, the label's config, datatrove's word tokenizer for it)
  -> DocumentTokenizer, each filter writing what it drops. Languages whose datatrove tokenizer
  needs a download (Stanza, botok) get the same offline substitute as ours.

Each contender runs in its own process, so its peak RSS is its own. Printed besides: our seconds
per step and per word segmenter (its loads apart, and the cap word splitting alone sets), our
build's MB/s as a share of raw `Tokenizer.encode_batch` over the same texts, our tokenize+write
steps against it, our build with
`--workers 2 --tasks 8` (its speed-up over one worker, its workers' largest peak RSS, whether it
decided the same; more tasks than workers, so a worker that finishes early takes the next task)
beside this machine's own ceiling for two processes, measured around it on fixed pure-Python work,
and every document the two decide differently, replayed through stock's classes to name the
departure that makes it (`bench/departures.py`). Run: `.venv/bin/python bench/pipeline.py [--mb 50]`
on a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import json
import multiprocessing
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for bench.peers and bench.departures
SAMPLE = ROOT / "pipeline" / "sample" / "hub" / "datasets" / "HuggingFaceFW" / "fineweb-2" / "data"
FINEWEB2 = "datasets/HuggingFaceFW/fineweb-2/data"
SENTENCE = re.compile(r"[^.!?。！？।॥።။។།\n]+[.!?。！？।॥።။។།]+")


def generate_corpus(hub: Path, megabytes: int, seed: int = 0) -> tuple[int, int]:
    """Documents of 5-30 real sentences of one language, until the corpus holds `megabytes` of text."""
    rng = random.Random(seed)
    sentences: dict[str, list[str]] = {}
    for path in sorted(SAMPLE.glob("*/train/*.parquet")):
        label = path.parts[-3]
        for text in pq.read_table(path, columns=["text"]).column("text").to_pylist():
            sentences.setdefault(label, []).extend(
                s.strip() for s in SENTENCE.findall(text) if len(s.strip()) > 20
            )
    sentences = {label: found for label, found in sentences.items() if len(found) >= 20}
    target, total, documents = megabytes * 1_000_000, 0, 0
    labels = sorted(sentences)
    per_file = target // len(labels) + 1
    for label in labels:
        texts, size = [], 0
        while size < per_file:
            paragraphs = [
                " ".join(rng.choice(sentences[label]) for _ in range(rng.randint(2, 6)))
                for _ in range(rng.randint(2, 6))
            ]
            text = "\n\n".join(paragraphs)
            texts.append(text)
            size += len(text.encode())
        code, script = label.split("_")
        path = hub / FINEWEB2 / label / "train" / "000_00000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(texts)
        pq.write_table(
            pa.table(
                {
                    "text": texts,
                    "id": [f"<urn:uuid:{label}-{i}>" for i in range(n)],
                    "language": [code] * n,
                    "language_script": [script] * n,
                    "language_score": [0.9] * n,
                    "minhash_cluster_size": pa.array([1] * n, pa.int64()),
                }
            ),
            path,
        )
        total += size
        documents += n
    return documents, total


def train_tokenizer(hub: Path, path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [
        t for p in sorted(hub.rglob("*.parquet")) for t in pq.read_table(p).column("text").to_pylist()[:300]
    ]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=32000,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.save(str(path))


def run_ours(hub: str, out: str, tokenizer: str, workers: int = 1, tasks: int = 1) -> dict:
    from mixtures.recipe import load_recipe
    from pipeline.build import Build
    from pipeline.build_options import BuildOptions

    options = BuildOptions(
        recipe=load_recipe(),
        phase="decay",
        output=Path(out),
        input_root=hub,
        tokenizer=tokenizer,
        lid="ft176",
        dedup=False,
        keep_removed=True,  # each dropped document with its reason, as stock's drops are counted
        tasks=tasks,
        workers=workers,
        sources=("fineweb2",),
    )
    build = Build(options)
    splitting = SplitTimes()  # one worker: in this process
    start = time.perf_counter()
    stats = build.run()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "kept": sum(s["documents_kept"] for s in stats["streams"]),
        "tokens": sum(s["tokens"] for s in stats["streams"]),
        "steps": step_seconds(sorted((build.phase_dir / "_logs").glob("*/stats.json"))),
        "task_seconds": [  # the main stage's tasks, each its steps' seconds
            sum(step_seconds([path]).values())
            for path in sorted((build.phase_dir / "_logs" / "process" / "stats").glob("*.json"))
        ],
        "word_splitting": splitting.seconds(),
        "segmenter_loads": splitting.loads(),
        "decisions": read_drops(sorted(build.phase_dir.glob("removed/**/*.jsonl.gz")), "fineweb2/"),
    }


def folder_language(doc_id: str) -> str:
    """The corpus folder (language) a generated document came from: ids are ``<urn:uuid:{label}-{i}>``."""
    return doc_id.split(":")[-1].rsplit("-", 1)[0]


class SplitTimes:
    """Seconds of word splitting per segmenter in this process (``LanguageWords``), loads apart.

    ``seconds()`` maps a segmenter (``describe``'s name) to its seconds splitting texts, loads
    excluded; ``loads()`` to its seconds loading (first use, model files and imports included).
    """

    def __init__(self):
        from pipeline.words import LanguageWords, describe

        self.total: collections.Counter[str] = collections.Counter()
        self.load: collections.Counter[str] = collections.Counter()
        tokenize, load = LanguageWords.word_tokenize, LanguageWords.tokenizer.fget

        def timed_load(words):
            if words._loaded is not None:
                return words._loaded
            start = time.perf_counter()
            try:
                return load(words)
            finally:
                self.load[describe(words.class_name, words.code)] += time.perf_counter() - start

        def timed_tokenize(words, text):
            start = time.perf_counter()
            try:
                return tokenize(words, text)
            finally:
                self.total[describe(words.class_name, words.code)] += time.perf_counter() - start

        LanguageWords.tokenizer = property(timed_load)
        LanguageWords.word_tokenize = timed_tokenize

    def seconds(self) -> dict[str, float]:
        return {name: seconds - self.load[name] for name, seconds in self.total.items()}

    def loads(self) -> dict[str, float]:
        return dict(self.load)


def _count_words(rounds: int) -> float:
    """A fixed amount of pure-Python work (counting words, as the filters do); returns its seconds."""
    text = " ".join(f"w{i % 997}" for i in range(20_000))
    start = time.perf_counter()
    for _ in range(rounds):
        collections.Counter(text.split())
    return time.perf_counter() - start


def _timed_at_signal(go, rounds: int, results) -> None:
    go.wait()
    results.put(_count_words(rounds))


def two_process_ceiling(rounds: int = 1000, repeat: int = 3) -> float:
    """This machine's speed-up from one process to two running the same fixed work at once (each
    the best of ``repeat``; the two start together and each times itself): what ``--workers 2``
    could reach here at best (2.0 on two idle, independent cores; less where the two vCPUs share a
    physical core or the host is busy)."""
    context = multiprocessing.get_context("fork")
    one, two = float("inf"), float("inf")
    for _ in range(repeat):
        one = min(one, _count_words(rounds))
        go, results = context.Event(), context.Queue()
        workers = [context.Process(target=_timed_at_signal, args=(go, rounds, results)) for _ in range(2)]
        for worker in workers:
            worker.start()
        go.set()
        two = min(two, max(results.get() for _ in workers))
        for worker in workers:
            worker.join()
    return 2 * one / two


def read_drops(files: list[Path], id_prefix: str = "") -> dict[str, str]:
    """Document id (less ``id_prefix``) -> drop reason, from exclusion writers' ``.jsonl.gz`` files:
    the record's ``filter_reason``, else its folder's name (a ``LambdaFilter`` gives none)."""
    drops = {}
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for record in map(json.loads, lines):
                reason = record["metadata"].get("filter_reason", path.parent.name)
                drops[record["id"].removeprefix(id_prefix)] = reason
    return drops


def step_seconds(stats_files: list[Path]) -> dict[str, float]:
    """Seconds per pipeline step (all tasks), from the executors' stats.json files."""
    seconds: dict[str, float] = {}
    for path in stats_files:
        for step in json.loads(path.read_text()):
            name = step["name"].split(": ", 1)[-1]
            seconds[name] = seconds.get(name, 0.0) + _total(step.get("time_stats", 0), float)
    return seconds


def run_stock(hub: str, out: str, tokenizer: str) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader, ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter

    from bench.departures import stock_words
    from bench.peers import fineweb2_quality_filters
    from pipeline.quality import FilterConfigs

    configs = FilterConfigs()
    seconds, kept, tokens = 0.0, 0, 0

    def execute(name: str, steps: list) -> list[dict]:
        nonlocal seconds
        executor = LocalPipelineExecutor(steps, tasks=1, workers=1, logging_dir=f"{out}/logs/{name}")
        start = time.perf_counter()
        executor.run()
        seconds += time.perf_counter() - start
        return json.loads(Path(f"{out}/logs/{name}/stats.json").read_text())

    # fineweb-2-pipeline.py: LID labels every document, a writer files it under its label ...
    execute(
        "lid",
        [
            ParquetReader(f"{hub}/{FINEWEB2}", glob_pattern="*/train/*.parquet"),
            stock_language_filter(),
            LambdaFilter(route_to_label),
            JsonlWriter(f"{out}/labelled", output_filename="${language}/${rank}.jsonl.gz"),
        ],
    )
    # ... and each label's documents go through its threshold and filters, drops written per filter.
    for folder in sorted(Path(f"{out}/labelled").iterdir()):
        language, config = folder.name, configs(folder.name)
        removed = f"{out}/removed/{language}"
        stats = execute(
            language,
            [
                JsonlReader(str(folder)),
                LambdaFilter(
                    functools.partial(above_language_threshold, threshold=config.language_score),
                    exclusion_writer=JsonlWriter(f"{removed}/language_score"),
                ),
                *fineweb2_quality_filters(stock_words(language), config, removed=removed),
                DocumentTokenizer(
                    f"{out}/tokens/{language}",
                    tokenizer_name_or_path=tokenizer,
                    eos_token="<eos>",
                    batch_size=1000,
                    shuffle_documents=False,
                ),
            ],
        )
        counted = next((step["stats"] for step in stats if "tokeniz" in step["name"].lower()), {})
        if isinstance(counted.get("tokens"), dict):  # datatrove writes 0 for none and leaves out n == 1
            kept += counted["tokens"].get("n", 1)
            tokens += counted["tokens"]["total"]
    decisions = read_drops(sorted(Path(f"{out}/removed").glob("*/*/*.jsonl.gz")))
    return {"seconds": seconds, "kept": kept, "tokens": tokens, "decisions": decisions}


def stock_language_filter():
    """datatrove's LanguageFilter, labels only (as FineWeb2 runs it), with LID-176 from our cache."""
    from datatrove.pipeline.filters import LanguageFilter
    from datatrove.utils.lid import FT176LID

    from pipeline.lid import lid176_model_path

    class LocalFT176(FT176LID):  # the same model file; datatrove would download lid.176.bin
        MODEL_URL = str(lid176_model_path())

    language_filter = LanguageFilter(label_only=True)
    language_filter.model = LocalFT176()
    return language_filter


def route_to_label(doc) -> bool:
    """Files a document under its ``xxx_Script`` label (GlotLID's spelling; LID-176 names no script)."""
    from bench.departures import stock_label

    doc.metadata["language"] = stock_label(doc.metadata["language"], doc.text)
    return True


def above_language_threshold(doc, threshold: float) -> bool:
    """fineweb-2-pipeline.py's language-score rule."""
    return doc.metadata["language_score"] >= threshold


def _total(value, kind: type = int):
    """A datatrove stat's total (it writes a bare number where nothing was measured)."""
    return kind(value["total"] if isinstance(value, dict) else value)


def run_tokenize_stage(hub: str, out: str, tokenizer: str) -> dict:
    """Our BatchTokenizer + ArrowShardWriter vs raw encode_batch over the same texts (in memory)."""
    from datatrove.data import Document

    from pipeline.shards import ArrowShardWriter
    from pipeline.tokenizer import BatchTokenizer, load_tokenizer

    texts = [
        t for p in sorted(Path(hub).rglob("*.parquet")) for t in pq.read_table(p).column("text").to_pylist()
    ]
    loaded = load_tokenizer(tokenizer)
    start = time.perf_counter()
    for i in range(0, len(texts), 1000):
        loaded.tokenizer.encode_batch_fast(texts[i : i + 1000], add_special_tokens=False)
    raw = time.perf_counter() - start
    docs = [
        Document(text=t, id=str(i), metadata={"source": "fineweb2", "language": "xxx_Latn"})
        for i, t in enumerate(texts)
    ]
    steps = [
        BatchTokenizer(tokenizer, batch_size=1000),
        ArrowShardWriter(out, "bench", loaded.name, loaded.sha256, shard_bytes=512_000_000),
    ]
    start = time.perf_counter()
    data = iter(docs)
    for step in steps:
        data = step.run(data)
    for _ in data:
        pass
    ours = time.perf_counter() - start
    return {"raw_seconds": raw, "ours_seconds": ours, "documents": len(texts)}


def measure(kind: str, hub: Path, out: Path, tokenizer: Path, *args) -> dict:
    """Run one contender in a fresh process; add its peak resident memory and its workers' largest."""
    # VmHWM is a process's own peak; ru_maxrss would also count this process's size at the fork
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
        f"from bench.pipeline import run_{kind}, peak_rss_mb, WorkerPeaks; "
        "peaks = WorkerPeaks(); peaks.start(); "
        f"r = run_{kind}({str(hub)!r}, {str(out)!r}, {str(tokenizer)!r}, *{args!r}); "
        "r['peak_rss_mb'] = peak_rss_mb('self'); r['worker_peak_rss_mb'] = peaks.stop(); print(json.dumps(r))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mb(pid: int | str) -> float:
    """A process's peak resident memory so far (VmHWM), in MB; 0 if it is gone."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0.0
    return int(found[1]) / 1024 if found else 0.0  # an exited process (zombie) has none


class WorkerPeaks(threading.Thread):
    """Polls the peak memory of this process's descendants (datatrove's worker pool) until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.done.wait(0.2):
            for child in me.children(recursive=True):
                self.peaks[child.pid] = max(self.peaks.get(child.pid, 0.0), peak_rss_mb(child.pid))

    def stop(self) -> float:
        self.done.set()
        self.join()
        return max(self.peaks.values(), default=0.0)


def compare_decisions(hub: Path, ours: dict[str, str], stock: dict[str, str], documents: int) -> None:
    """Replays every document the two decide differently and prints each one's departure."""
    from bench.departures import StockReplay, attribute, print_attribution
    from pipeline.quality import FilterConfigs

    differing = {i for i in ours.keys() | stock.keys() if ours.get(i) != stock.get(i)}
    texts = {}
    for path in sorted(hub.rglob("*.parquet")):
        table = pq.read_table(path, columns=["id", "text"]).to_pydict()
        texts.update((i, t) for i, t in zip(table["id"], table["text"], strict=True) if i in differing)
    replay = StockReplay(stock_language_filter(), FilterConfigs())
    none = dict.fromkeys(texts)  # kept
    print_attribution(attribute(texts, none | ours, none | stock, replay), documents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50, help="corpus size in MB of UTF-8 text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hub = tmp / "hub"
        documents, size = generate_corpus(hub, args.mb)
        print(
            f"corpus: {documents:,d} documents, {size / 1e6:.1f} MB, "
            f"{len(list(hub.rglob('*.parquet')))} languages"
        )
        tokenizer = tmp / "tokenizer.json"
        train_tokenizer(hub, tokenizer)
        results = {kind: measure(kind, hub, tmp / kind, tokenizer) for kind in ("ours", "stock")}
        print(f"{'':8}{'docs/s':>10}{'MB/s':>8}{'kept':>9}{'tokens':>12}{'peak RSS MB':>13}")
        for kind, r in results.items():
            print(
                f"{kind:8}{documents / r['seconds']:>10,.0f}{size / 1e6 / r['seconds']:>8.2f}{r['kept']:>9,d}"
                f"{r['tokens']:>12,d}{r['peak_rss_mb']:>13,.0f}"
            )
        ours, stock = results["ours"], results["stock"]
        splitting, loads = ours["word_splitting"], ours["segmenter_loads"]
        split_seconds = sum(splitting.values()) + sum(loads.values())
        print("our build, seconds per step (all stages, one worker; word splitting, segmenter loads")
        print(f"included, is inside the first filter to split a document: {split_seconds:.1f} s):")
        for name, seconds in sorted(ours["steps"].items(), key=lambda item: -item[1]):
            if seconds >= 0.05:
                print(f"  {name:28}{seconds:>8.1f}")
        print(f"word splitting per segmenter (seconds splitting + loading; {len(splitting)} segmenters):")
        listed = sorted(splitting, key=lambda name: -(splitting[name] + loads.get(name, 0.0)))[:8]
        for name in listed:
            print(f"  {name:28}{splitting[name]:>8.1f} +{loads.get(name, 0.0):>5.1f}")
        others = [name for name in splitting if name not in listed]
        print(
            f"  {'the others':28}{sum(splitting[name] for name in others):>8.1f} +"
            f"{sum(loads.get(name, 0.0) for name in others):>5.1f}"
        )
        print(f"  {'all loads':28}{sum(loads.values()):>8.1f}")
        ratio = stock["seconds"] / ours["seconds"]
        print(f"build throughput ratio ours/stock: {ratio:.2f}x (goal >= 3, floor 2)")
        rss = ours["peak_rss_mb"] / stock["peak_rss_mb"]
        print(f"peak RSS ours/stock: {rss:.2f}x (goal <= 1.20)")
        stage = measure("tokenize_stage", hub, tmp / "stage", tokenizer)
        raw = size / 1e6 / stage["raw_seconds"]
        print(f"build MB/s vs raw encode_batch: {size / 1e6 / ours['seconds'] / raw:.0%} (goal >= 25%)")
        print(
            f"  word splitting alone ({split_seconds:.1f} s, loads included) caps our build "
            f"at {size / 1e6 / split_seconds:.2f} MB/s = "
            f"{size / 1e6 / split_seconds / raw:.0%} of raw encode_batch; the rest of ours: "
            f"{ours['seconds'] - split_seconds:.1f} s"
        )
        share = stage["raw_seconds"] / stage["ours_seconds"]
        print(
            f"tokenize+write: {size / 1e6 / stage['ours_seconds']:.2f} MB/s vs raw encode_batch "
            f"{raw:.2f} MB/s = {share:.0%} (goal >= 70%)"
        )
        before = two_process_ceiling()
        two = measure("ours", hub, tmp / "ours-2", tokenizer, 2, 8)
        ceiling = (before + two_process_ceiling()) / 2
        speedup = ours["seconds"] / two["seconds"]
        print(
            f"--workers 2 --tasks 8: {documents / two['seconds']:,.0f} docs/s, "
            f"{speedup:.2f}x one worker; peak RSS per worker "
            f"{two['worker_peak_rss_mb']:,.0f} MB (one worker: {ours['peak_rss_mb']:,.0f} MB); "
            f"same decisions: {two['decisions'] == ours['decisions']}"
        )
        tasks = two["task_seconds"]
        print(
            f"  this machine's own 2-process ceiling (the same pure-Python work in 1 and 2 processes, "
            f"before and after): {ceiling:.2f}x, so ours reaches {speedup / ceiling:.0%} of it; "
            f"its 8 tasks took {min(tasks):.0f}-{max(tasks):.0f} s, {sum(tasks):.0f} s in all "
            f"(one worker's task: {sum(ours['task_seconds']):.0f} s), of {two['seconds']:.0f} s wall"
        )
        compare_decisions(hub, ours["decisions"], stock["decisions"], documents)


if __name__ == "__main__":
    main()
