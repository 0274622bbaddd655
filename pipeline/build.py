"""The build graph of one phase, and running it with a datatrove executor.

Stage 1 (``process``, N tasks): read every source of the phase, normalise the text
(``pipeline.words.normalize_text``; what is stored is the normalised text), identify the
language, drop by language score and the per-language quality filters. Without
deduplication it tokenizes and writes shards directly. With deduplication it
writes the surviving documents and their MinHash signatures, and three more
stages follow: ``buckets`` (one task per MinHash bucket), ``clusters`` (one task)
and ``write`` (N tasks: drop near-duplicates, tokenize, write shards).

Two stages set the held-out documents apart (``pipeline.heldout``): the last data stage puts
the candidates aside, ``select`` (one task) chooses each stream's held-out set from their keys and
token counts, and ``heldout`` (N tasks) writes it as held-out shards, returning the other
candidates to training. A last one-task stage, ``stats``, writes ``stats.json``. Executors are separate
from steps, as in datatrove: :meth:`Build.executors` chains one executor per
stage, local processes or Slurm array jobs; every task's completion is recorded
under ``_logs/{stage}``, so running the same build again skips finished tasks.
:meth:`Build.settings` is what must not change between such runs (see
``pipeline.guard``, which records them and locks the phase directory).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster
from datatrove.pipeline.writers import JsonlWriter
from loguru import logger

from mixtures.cache import cache_dir
from mixtures.counts import changed_shards, damaged_build, load_stats, read_stats
from mixtures.hub import hub_unavailable, unreachable_reason
from mixtures.languages import language_code
from mixtures.recipe import PhaseSpec
from mixtures.slurm import job_tag
from mixtures.storage import Published, check_access, exists, is_remote, join, publish, read_bytes
from pipeline.bad_input import USER_ERRORS, NoInputError
from pipeline.build_options import BuildOptions
from pipeline.dedup import LanguageScopedSignature, RankFileReader, Rehydrate, StreamMinhashFilter
from pipeline.guard import LOCK_NAME, SETTINGS_NAME, BuildConflict, BuildLock, check_settings
from pipeline.heldout import (
    HELDOUT_RATE,
    HELDOUT_TOKENS,
    HeldOutCandidates,
    HeldOutSelection,
    HeldOutSplit,
)
from pipeline.labels import LanguageSelection
from pipeline.lid import LanguageIdentifier, LanguageScoreFilter, glotlid_is_cached
from pipeline.progress import StageDisplay, watched
from pipeline.quality import (
    FILTER_FAMILIES,
    FINEWEB2_CONFIGS,
    SHIPPED,
    DocumentSizeFilter,
    FilterConfigs,
    LanguageQualityFilter,
)
from pipeline.shards import ArrowShardWriter
from pipeline.slurm import (
    check_can_submit,
    cluster_max_array_size,
    slurm_executor,
    submit_chain,
    submitted_line,
)
from pipeline.sources import SourceReader, resolve_uri
from pipeline.stats import StatsCompiler
from pipeline.streams import StreamCounter
from pipeline.tokenizer import BatchTokenizer, directory_sha256, load_tokenizer
from pipeline.words import TextNormalizer

# What a phase directory holds for the build itself (intermediates, task logs, its lock): never published
STAGED_ONLY = ("_work", "_logs", LOCK_NAME)


def staging_dir(output: str) -> Path:
    """Where a build whose ``--output`` is an object store is made before it is published: one
    directory per output URL in the asset cache, so that a rerun resumes from it."""
    return cache_dir() / "staging" / hashlib.sha256(output.rstrip("/").encode()).hexdigest()[:16]


class QuietLocalExecutor(LocalPipelineExecutor):
    """A local executor whose tasks log to their files only; unexpected errors still reach the console.

    datatrove copies a task's INFO log to the console for local rank 0 only, so every
    task here runs as a non-zero local rank (the number is used for nothing else). A user
    error (bad input, say) is logged with its traceback in the task's file only: the command
    prints it in one line.
    """

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        logger.configure(patcher=_user_errors_to_the_task_log)
        try:
            return super()._run_for_rank(rank, local_rank + 1, node_rank)
        finally:
            logger.configure(patcher=_unpatched)  # loguru has no way to remove a patcher


def _user_errors_to_the_task_log(record: dict) -> None:
    """Files a user error's ERROR record below the console's level (datatrove's console sink of a
    non-zero local rank takes ERROR and up; the task's log file takes everything)."""
    level, error = record["level"], record["exception"]
    if error is not None and isinstance(error.value, USER_ERRORS) and level.no >= logger.level("ERROR").no:
        record["level"] = type(level)(level.name, logger.level("WARNING").no, level.icon)


def _unpatched(record: dict) -> None:
    """Leaves every record as it is."""


class Build:
    """One phase's build: its resolved settings, stage graph and outputs."""

    def __init__(self, options: BuildOptions):
        self.options = options
        self.spec: PhaseSpec = options.recipe.phase(options.phase)
        if self.spec.built_as != options.phase:
            raise ValueError(
                f"phase {options.phase} trains on the build of phase {self.spec.built_as} (its `build:` in "
                f"{options.recipe.path}); run `mmbert-data build --phase {self.spec.built_as}`"
            )
        processing = self.spec.processing
        output = str(options.output)
        # An object store has no rename: the build is made (and resumed) in a local staging directory,
        # then published there file by file (mixtures.storage.publish).
        self.published: str | None = join(output, options.phase) if is_remote(output) else None
        self.publication: Published | None = None  # what publishing to ``published`` did, once done
        if self.published and not output.startswith("s3://"):
            raise ValueError(f"--output {output}: a build is written to a local path or an s3:// URL")
        if self.published and options.executor == "slurm" and options.staging is None:
            raise ValueError(
                f"--output {output} with --executor slurm: pass --staging DIR, a directory every node "
                "shares, for the build to be made in before it is uploaded"
            )
        staging = options.staging or (staging_dir(output) if self.published else None)
        self.phase_dir = Path(staging or output).expanduser().resolve() / options.phase
        self.lid = options.lid or processing.lid
        self.dedup = processing.dedup if options.dedup is None else options.dedup
        self.rehydrate = processing.rehydrate if options.rehydrate is None else options.rehydrate
        self.languages = options.languages if options.languages is not None else self.spec.languages
        self.filter_configs = FilterConfigs(options.filter_configs or processing.filter_configs)
        pool = [name for name, source in options.recipe.sources.items() if source.pool]
        wanted = options.sources or (*pool, *self.spec.budgets)
        unknown = [s for s in wanted if s not in options.recipe.sources]
        if unknown:
            near = difflib.get_close_matches(unknown[0], options.recipe.sources, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ValueError(
                f"unknown source(s) {unknown}{hint}; the recipe has {', '.join(options.recipe.sources)}"
            )
        self.sources = [options.recipe.sources[name] for name in wanted]
        self.tokenizer_spec = options.tokenizer or options.recipe.tokenizer
        root = options.input_root
        if root and "://" not in root and not Path(root).is_dir():
            raise NoInputError(f"--input-root {root} is not a directory")

    @functools.cached_property
    def hub_unreachable(self) -> str | None:
        """Why the Hugging Face hub cannot be reached (asked once per build), or None."""
        return unreachable_reason()

    # ---- inputs --------------------------------------------------------------------------------------
    def input_files(self, downloading: bool = False) -> list[tuple[SourceReader, list[str]]]:
        """Each source's reader and the files it will read. Stops, naming where it looked, when an
        ``hf://`` source's hub cannot be reached, a source the selection asks for has no files at
        all, a ``--languages`` entry is found in no source, or nothing at all is selected.
        ``downloading``: for `mmbert-data download`, whose way out without the hub is another machine."""
        readers = self.readers()
        remote = [r.source for r in readers if self._location(r).startswith("hf://")]
        if remote and self.hub_unreachable:
            mirror = f"`mmbert-data download --phase {self.options.phase} --output DIR`"
            raise hub_unavailable(
                f"reading {', '.join(f'{s.name} ({s.uri})' for s in remote)}",
                self.hub_unreachable,
                "run this download on a machine that reaches the hub (or through a proxy: HTTPS_PROXY), "
                "then copy DIR here and build with --input-root DIR"
                if downloading
                else f"mirror the phase with {mirror} where the hub can be reached, "
                "then build with --input-root DIR",
            )
        found, catalogs = [], {}
        for reader in readers:
            if not reader.serves_selection():
                found.append((reader, []))
                continue
            catalog = catalogs[reader.source.name] = reader.catalog()
            if not catalog:
                raise NoInputError(self._no_files_message(reader))
            found.append((reader, [path for language, path in catalog if reader.selection.selects(language)]))
        if self.options.languages is not None:
            present = {language for catalog in catalogs.values() for language, _ in catalog}
            for entry in self.options.languages:
                self._check_found(entry, present, list(catalogs))
        if not any(files for _, files in found):
            raise NoInputError(
                f"no input file of phase {self.options.phase}'s languages in "
                f"{', '.join(s.name for s in self.sources)} (under {self.options.input_root or 'the hub'})"
            )
        return found

    def _location(self, reader: SourceReader) -> str:
        return resolve_uri(reader.source.uri, self.options.input_root)

    def _no_files_message(self, reader: SourceReader) -> str:
        source, root = reader.source, self.options.input_root
        mapped = f"; --input-root {root} maps {source.uri} there" if root and "://" in source.uri else ""
        return (
            f"source {source.name}: no input files under {self._location(reader)} "
            f"(looked for {', '.join(reader.patterns())}{mapped}). Mirror it with `mmbert-data download "
            f"--phase {self.options.phase} --output DIR`, or leave it out with --sources"
        )

    @staticmethod
    def _check_found(entry: str, present: set[str | None], sources: list[str]) -> None:
        """Stop when a ``--languages`` entry selects no file of any source, listing near misses."""
        wanted = LanguageSelection.parse([entry])
        if any(wanted.selects(language) for language in present if language):
            return
        known = sorted(language for language in present if language)
        # near: the languages of a code spelled like the one asked for (fra for frr), in every script
        codes = {language_code(known_language) for known_language in known}
        asked = {language_code(spelling) for spelling in (entry, *wanted.codes, *wanted.labels)}
        close = {m for code in asked for m in difflib.get_close_matches(code, codes, n=3, cutoff=0.6)}
        near = [known_language for known_language in known if language_code(known_language) in close]
        more = f" and {len(known) - 10} more" if len(known) > 10 else ""
        hint = f"near misses: {', '.join(near)}" if near else f"it holds {', '.join(known[:10])}{more}"
        raise NoInputError(f"--languages {entry!r}: no input file in {', '.join(sources)} ({hint})")

    # ---- steps ---------------------------------------------------------------------------------------
    def _removed_writer(self, name: str) -> JsonlWriter | None:
        if not self.options.keep_removed:
            return None
        return JsonlWriter(str(self.phase_dir / "removed" / name), output_filename="${rank}.jsonl.gz")

    def readers(self) -> list[SourceReader]:
        return [
            SourceReader(
                source,
                languages=self.languages,
                input_root=self.options.input_root,
                on_error=self.options.on_error,
                errors_dir=str(self.phase_dir / "_errors"),
                limit=self.options.limit,
            )
            for source in self.sources
        ]

    def filters(self) -> list[PipelineStep]:
        processing = self.spec.processing
        return [
            TextNormalizer(),
            LanguageIdentifier(self.lid, model_path=self.options.lid_model),
            StreamCounter("read"),
            DocumentSizeFilter(processing.max_document_bytes, exclusion_writer=self._removed_writer("size")),
            LanguageScoreFilter(
                self.languages,
                self.filter_configs.language_score,
                exclusion_writer=self._removed_writer("language"),
            ),
            *(
                LanguageQualityFilter(
                    family,
                    self.filter_configs,
                    sources=frozenset(s.name for s in self.sources if s.quality_filters),
                    exclusion_writer=self._removed_writer(family),
                )
                for family in FILTER_FAMILIES
            ),
        ]

    @property
    def heldout_dir(self) -> Path:
        """Where the held-out candidates, their lists and the selection are kept between stages."""
        return self.phase_dir / "_work" / "heldout"

    def writers(self, tokenizer: dict, split: PipelineStep, prefix: str = "") -> list[PipelineStep]:
        """Tokenize, ``split`` (put held-out candidates aside, or mark them held out), rehydrate, write
        (shards named ``{prefix}{task}-{seq}.arrow``)."""
        processing = self.spec.processing
        return [
            BatchTokenizer(self.tokenizer_spec, batch_size=processing.tokenize_batch),
            split,
            *([Rehydrate()] if self.rehydrate else []),
            ArrowShardWriter(
                str(self.phase_dir),
                self.options.phase,
                tokenizer["name"],
                tokenizer["sha256"],
                processing.shard_bytes,
                prefix,
            ),
        ]

    def stages(self, tokenizer: dict) -> list[tuple[str, list, int]]:
        """(name, pipeline, tasks) of each stage, in order; the last one writes stats.json.

        ``tokenizer`` is the record shards and stats.json carry (``LoadedTokenizer.record()``).
        """
        compile_stats = StatsCompiler(
            str(self.phase_dir),
            self.options.phase,
            recipe={"path": str(self.options.recipe.path), "sha256": self.options.recipe.sha256},
            tokenizer=tokenizer,
        )
        heldout = str(self.heldout_dir)
        return [
            *self._data_stages(tokenizer),
            ("select", [HeldOutSelection(heldout, HELDOUT_RATE, HELDOUT_TOKENS)], 1),
            (
                "heldout",
                [
                    RankFileReader(f"{heldout}/candidates"),
                    *self.writers(tokenizer, HeldOutSplit(heldout), prefix="c"),
                ],
                self.options.tasks,
            ),
            ("stats", [compile_stats], 1),
        ]

    def _data_stages(self, tokenizer: dict) -> list[tuple[str, list, int]]:
        tasks = self.options.tasks
        process = [*self.readers(), *self.filters()]
        candidates = HeldOutCandidates(str(self.heldout_dir), HELDOUT_RATE, HELDOUT_TOKENS)
        if not self.dedup:
            return [("process", [*process, *self.writers(tokenizer, candidates)], tasks)]
        work = self.phase_dir / "_work"
        minhash = self.options.minhash
        return [
            (
                "process",
                [
                    *process,
                    JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl.gz"),
                    LanguageScopedSignature(str(work / "signatures"), config=minhash),
                ],
                tasks,
            ),
            (
                "buckets",
                [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=minhash)],
                minhash.num_buckets,
            ),
            (
                "clusters",
                [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=minhash)],
                1,
            ),
            (
                "write",
                [
                    RankFileReader(str(work / "filtered")),
                    StreamMinhashFilter(str(work / "remove"), exclusion_writer=self._removed_writer("dedup")),
                    *self.writers(tokenizer, candidates),
                ],
                tasks,
            ),
        ]

    # ---- running -------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The stage graph and the files each source would read (`--dry-run`)."""
        lines = [f"phase {self.options.phase} -> {self.phase_dir}"]
        lines.append(
            f"tokenizer {self.tokenizer_spec}; lid {self.lid}; dedup {'on' if self.dedup else 'off'}"
        )
        # The tokenizer is not loaded for a dry run: the steps name it by its spec alone.
        for name, pipeline, tasks in self.stages({"name": self.tokenizer_spec, "sha256": ""}):
            lines.append(f"stage {name} ({tasks} task{'s' if tasks != 1 else ''}):")
            lines.extend(f"  {step}" for step in pipeline)
        for reader, files in self.input_files():
            lines.append(f"source {reader.source.name} ({reader.data_folder.path}): {len(files)} file(s)")
            lines.extend(f"  {path}" for path in files)
        return "\n".join(lines)

    def executors(self, tokenizer: dict) -> dict[str, PipelineExecutor]:
        """One executor per stage, in order, each depending on the one before (local or Slurm)."""
        chain: dict[str, PipelineExecutor] = {}
        max_array_size = cluster_max_array_size() if self.options.executor == "slurm" else None
        for name, pipeline, tasks in self.stages(tokenizer):
            logging_dir = self.phase_dir / "_logs" / name
            depends = list(chain.values())[-1] if chain else None
            if self.options.executor == "slurm":
                executor = slurm_executor(
                    pipeline,
                    self.options.slurm,
                    tasks=tasks,
                    workers=self.options.workers,
                    logging_dir=logging_dir,
                    job_name=f"mmbert-{self.options.phase}-{name}-{self.job_tag}",
                    max_array_size=max_array_size,
                    depends=depends,
                )
            else:
                local = LocalPipelineExecutor if self.options.verbose else QuietLocalExecutor
                executor = local(
                    pipeline,
                    tasks=tasks,
                    workers=min(self.options.workers or 1, tasks),
                    logging_dir=str(logging_dir),
                    depends=depends,
                )
            chain[name] = executor
        return chain

    @property
    def job_tag(self) -> str:
        """What the Slurm job names of this phase directory end with, to find its jobs in ``squeue``."""
        return job_tag(self.phase_dir)

    def settings(self, tokenizer: dict) -> tuple[dict, dict[str, str]]:
        """What the phase directory's content depends on, and the names of its hashed entries.

        Files are compared by content (the recipe, tokenizer and filter configs by
        sha256), so the same files reached by another path resume. ``--on-error`` is
        not a setting: a task that met bad input under ``fail`` left no completion,
        so rerunning with ``skip`` mixes nothing. Nor are workers or the executor.
        """
        options = self.options
        configs = self.filter_configs
        if configs.shipped:
            configs_sha256 = hashlib.sha256(FINEWEB2_CONFIGS.read_bytes()).hexdigest()
            configs_label = f"{SHIPPED} (shipped with the package)"
        elif configs.directory is not None:
            configs_sha256, configs_label = directory_sha256(configs.directory), str(configs.directory)
        else:
            configs_sha256, configs_label = None, "none (the defaults)"
        settings = {
            "phase": options.phase,
            "recipe": options.recipe.sha256,
            "sources": [source.name for source in self.sources],
            "languages": list(self.languages) if self.languages is not None else "all",
            "input_root": _resolved(options.input_root),
            "tokenizer": tokenizer["sha256"],
            "lid": self.lid,
            "lid_model": _resolved(options.lid_model),
            "filter_configs": configs_sha256,
            "dedup": self.dedup,
            "minhash": str(options.minhash) if self.dedup else None,
            "rehydrate": self.rehydrate,
            "keep_removed": options.keep_removed,
            "limit": options.limit,
            "tasks": options.tasks,
            "heldout": {"rate": HELDOUT_RATE, "tokens": HELDOUT_TOKENS},
        }
        labels = {
            "recipe": str(options.recipe.path),
            "tokenizer": tokenizer["name"],
            "filter_configs": configs_label,
        }
        return settings, labels

    def run(
        self,
        display: StageDisplay | None = None,
        say: Callable[[str], None] | None = None,
    ) -> dict | None:
        """Run (or resume) every stage. Locally, return ``stats.json``; on Slurm, submit the stages
        not done before (``say`` gets one line per stage: its job ids and tasks) and return None, or
        ``stats.json`` where every stage was done before.

        ``display`` follows each local stage's finished tasks (``pipeline.progress``); ``say`` gets
        notes (a lock taken over).
        Raises ``pipeline.guard.BuildConflict`` when another build holds the phase directory
        or it was built with other settings (unless ``overwrite``).
        """
        for url in (self.published, self.options.input_root):
            if url and url.startswith("s3://"):
                check_access(url)  # credentials and bucket, in one line, before anything runs
        self.input_files()
        if self.options.executor == "slurm":
            check_can_submit(self.job_tag, self.phase_dir, "build")
        hub_glotlid = self.lid == "glotlid" and self.options.lid_model is None and not glotlid_is_cached()
        if hub_glotlid and self.hub_unreachable:
            raise hub_unavailable(
                "loading GlotLID (cis-lmu/glotlid model_v3.bin, not in datatrove's cache)",
                self.hub_unreachable,
                "download model_v3.bin where the hub can be reached and pass --lid-model PATH",
            )
        # Loaded here, once: a sample tokenizer is trained and cached before workers start. Before the
        # phase directory is made, so a tokenizer that cannot be loaded leaves nothing behind.
        loaded = load_tokenizer(self.tokenizer_spec)
        self._make_phase_dir()
        with BuildLock(self.phase_dir) as lock:
            if lock.taken_over and say:
                say(lock.takeover_note())
            record = self.phase_dir / SETTINGS_NAME
            fresh = self.options.overwrite or not record.exists()
            settings, labels = self.settings(loaded.record())
            check_settings(self.phase_dir, settings, labels, overwrite=self.options.overwrite)
            if self.published and not self.options.overwrite:
                self._check_published_settings(settings)
            try:
                chain = self.executors(loaded.record())
            except BaseException:  # a stage that cannot be set up (a missing LID model): nothing was
                if fresh:  # built, so the settings just recorded must not refuse the corrected rerun
                    record.unlink(missing_ok=True)
                raise
            if self.options.executor == "slurm":
                submit_chain(chain)
                for name, executor in chain.items():
                    if say:
                        say(submitted_line(name, executor))
            else:
                for name, executor in chain.items():
                    with watched(executor, name, display):
                        executor.run()
            if self.options.executor == "slurm" and any(executor.to_run for executor in chain.values()):
                return None
            counts = read_stats(self.phase_dir)  # a rerun skips finished tasks: their shards must still be
            problems = changed_shards(counts)  # the files they wrote
            if problems:
                raise damaged_build(counts, problems)
            if self.published:  # under the lock: one build publishes at a time
                staged_only = lambda path: path.split("/")[0] in STAGED_ONLY  # noqa: E731
                # manifests compiled beside stats.json stay while it does
                manifest = lambda key: "/" not in key and key.endswith(".json")  # noqa: E731
                self.publication = publish(self.phase_dir, self.published, skip=staged_only, spare=manifest)
        return load_stats(self.phase_dir)

    def _check_published_settings(self, settings: dict) -> None:
        """The settings in the published ``build.json`` must be this build's, as in a local phase
        directory: a build made in another staging directory (another machine, a cleared cache)
        would otherwise replace it unasked. Raises BuildConflict naming the settings that differ."""
        remote = join(self.published, SETTINGS_NAME)
        if not exists(remote):
            return
        try:
            published = json.loads(read_bytes(remote)).get("settings") or {}
        except (ValueError, AttributeError):
            published = {}
        mine = json.loads(json.dumps(settings))
        changed = sorted(key for key in {*published, *mine} if published.get(key) != mine.get(key))
        if changed:
            raise BuildConflict(
                f"{self.published} holds a build with other settings ({', '.join(changed)}, in its "
                f"{SETTINGS_NAME}); pass --overwrite to replace it, or write to another --output"
            )

    @property
    def stats_location(self) -> str:
        """Where the build's ``stats.json`` is read: under ``--output``, a local path or a URL."""
        return join(self.published, "stats.json") if self.published else str(self.phase_dir / "stats.json")

    def _make_phase_dir(self) -> None:
        try:
            self.phase_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.phase_dir):
                pass
        except OSError as err:
            raise ValueError(
                f"--output {self.options.output}: cannot write {self.phase_dir} ({err.strerror or err})"
            ) from err


def _resolved(path: str | None) -> str | None:
    """A local path as an absolute one (a URL such as ``s3://...`` as given)."""
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())
