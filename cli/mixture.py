"""`mmbert-data mixture` compiles a phase of the recipe into a manifest; `mmbert-data validate` checks one.

Which phase: ``--phase``, else the phase recorded in ``--stats``, else the
recipe phase whose temperature is ``--temperature`` (so ``mmbert-data mixture
--temperature 0.3`` is the decay phase). Which counts: ``--stats`` (a build's
phase directory), ``--counts`` (a CSV, for planning), or with neither the phase
directory of the build in ``runs/build`` (build's default ``--output``) under the current
directory: no record of "the last build" is kept anywhere, so another clone or job never
decides what is read, and the output always names the file it read. Overrides
(``--temperature``, ``--tokens``, ``--max-epochs``, ``--sampler``, ``--languages``) change the compiled phase
only; the recipe file stays as it is and the manifest records what was used.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from cli.options import choices, local_path, location, token_amount
from mixtures.compiler import Mixture, compile_phase, multilingual_source, pool_shares
from mixtures.counts import (
    Counts,
    changed_shards,
    damaged_build,
    parse_bytes_per_token,
    read_counts_csv,
    read_stats,
)
from mixtures.errors import MixtureError
from mixtures.formats import BUILD_OUTPUT
from mixtures.languages import every_language
from mixtures.manifest import build_manifest, load_manifest, validate_manifest, write_manifest
from mixtures.plot import plot_shares
from mixtures.recipe import Recipe, RecipeError, load_recipe
from mixtures.sampling import SAMPLERS
from mixtures.storage import StorageError, check_writable, exists, is_remote, join, modified, parent
from mixtures.table import print_mixture

PROBLEMS_SHOWN = 20
REPEATS_WARNED = 100  # a stream's data seen more often than this is a plan nobody means
REPEATED_NAMED = 5  # the warning names this many of those streams, the most repeated first

Sampler = choices("Sampler", SAMPLERS)


def mixture(
    phase: str | None = typer.Option(
        None,
        "--phase",
        help="Recipe phase to compile (default: the phase of --stats, or the one at --temperature).",
    ),
    temperature: float | None = typer.Option(
        None,
        "--temperature",
        help="Sampling temperature; without --phase or --stats it also picks the phase.",
    ),
    stats: str | None = typer.Option(
        None,
        "--stats",
        help="A build's phase directory (or its stats.json; a path, or an s3:// or hf:// URL), or with "
        "--phase the build's --output.",
    ),
    counts: Path | None = typer.Option(
        None,
        "--counts",
        help="Plan without a build: FineWeb2's language-distribution CSV or a language,tokens CSV.",
    ),
    bytes_per_token: list[str] | None = typer.Option(
        None,
        "--bytes-per-token",
        help="With --counts: SCRIPT=BYTES per token, overriding the estimate (repeatable).",
    ),
    tokens: str | None = typer.Option(
        None,
        "--tokens",
        help="Total tokens of the phase (k/M/B/T suffixes); fixed budgets scale by the same ratio.",
    ),
    max_epochs: float | None = typer.Option(
        None, "--max-epochs", help="No stream is asked for more than this many epochs of its data."
    ),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Seed the trainer samples streams with (recorded in the manifest)."
    ),
    sampler: Sampler = typer.Option(
        Sampler.temperature,
        "--sampler",
        help="How the multilingual pool's tokens are split over its languages (under the epoch cap).",
    ),
    languages: str | None = typer.Option(
        None,
        "--languages",
        help="Comma-separated ISO 639-3 codes or xxx_Script names replacing the phase's list, or 'all'.",
    ),
    recipe: Path | None = typer.Option(
        None, "--recipe", help="Recipe file (default: the bundled mmBERT recipe)."
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Manifest to write: a local file or an s3:// URL (default: manifest.json beside the build's "
        "statistics).",
        callback=location,
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="PNG of every phase's per-language share: the other phases from their manifests "
        "(PHASE.json beside --output, or manifest.json in the build's PHASE directory); when planning "
        "from --counts, as the recipe sets them over the same counts.",
        callback=local_path,
    ),
    top: int = typer.Option(20, "--top", help="Languages shown in the table (plus the smallest few)."),
) -> None:
    """Turn a phase's temperature schedule into the manifest the trainer reads."""
    console = Console(soft_wrap=True)
    try:
        loaded = load_recipe(recipe)
        found, phase = _counts(loaded, phase, temperature, stats, counts, bytes_per_token or [])
        if output is None and str(found.data_root or "").startswith("hf://"):
            raise MixtureError(f"the build is at {found.data_root}, which is read-only: pass --output PATH")
        output = output or (join(found.data_root, "manifest.json") if found.data_root else None)
        if output is not None and is_remote(output):
            check_writable(str(output))  # before the compile and its tables
        pool_source = multilingual_source(loaded)
        if languages is None:
            wanted = None
        elif languages.strip() == "all":
            wanted = every_language(s.language for s in found.streams if s.source == pool_source)
        else:
            wanted = [name.strip() for name in languages.split(",") if name.strip()]
        compiled = compile_phase(
            loaded,
            phase,
            found,
            temperature=temperature,
            tokens=token_amount(tokens),
            max_epochs=max_epochs,
            sampler=sampler.value,
            languages=wanted,
        )
        console.print(f"counts: {escape(_counts_origin(found))}")
        _warn(console, loaded, found, compiled)
        print_mixture(console, compiled, loaded, top)
        if output is not None:
            fingerprint = write_manifest(build_manifest(compiled, loaded, found, seed), output)
            console.print(f"wrote manifest {escape(str(output))} (fingerprint {fingerprint[:16]})")
        if plot is not None:
            pool = {s.language: s.tokens for s in found.streams if s.source == pool_source}
            series = _phase_series(console, loaded, found, compiled, output, pool)
            plot_shares(series, pool, plot)
            console.print(f"wrote plot {escape(str(plot))}")
    except (MixtureError, RecipeError, OSError, StorageError) as err:
        _fail(err)


def _fail(err: Exception) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(err))}")
    raise typer.Exit(1) from err


def _counts(
    recipe: Recipe,
    phase: str | None,
    temperature: float | None,
    stats: str | None,
    counts: Path | None,
    bytes_per_token: list[str],
) -> tuple[Counts, str]:
    """The counts to compile from and the phase they are compiled for."""
    if phase is not None:
        recipe.phase(phase)  # a phase the recipe lacks is named as such, whatever else is given
    if stats is not None and counts is not None:
        raise MixtureError("pass either --stats (a build) or --counts (a CSV), not both")
    if bytes_per_token and counts is None:
        raise MixtureError("--bytes-per-token applies to --counts only")
    if stats is not None:
        within = not str(stats).endswith(".json") and not exists(join(stats, "stats.json"))
        if phase is not None and within and (is_remote(stats) or Path(stats).is_dir()):
            stats = join(stats, recipe.phase(phase).built_as)  # the build's --output: its phase's directory
        found = _intact(read_stats(stats))
        built_as = recipe.phase(phase).built_as if phase is not None else found.phase
        if built_as != found.phase:
            raise MixtureError(
                f"{stats} holds the statistics of phase {found.phase!r}; phase {phase} is compiled from "
                f"the build of {built_as!r}: pass --stats OUTPUT/{built_as}"
            )
        return found, phase or recipe.phase(found.phase).name
    if phase is None and temperature is None:
        raise MixtureError("name the phase: --phase NAME, --temperature T, or --stats DIR")
    spec = recipe.phase(phase) if phase is not None else recipe.phase_for_temperature(temperature)
    if counts is not None:
        table = parse_bytes_per_token(bytes_per_token)
        return read_counts_csv(counts, multilingual_source(recipe), table), spec.name
    default = BUILD_OUTPUT / spec.built_as / "stats.json"
    if not default.exists():
        raise MixtureError(
            f"no --stats or --counts given, and {default} (the build's default output) is missing; "
            f"run `mmbert-data build --phase {spec.built_as}` or pass --stats OUTPUT/{spec.built_as}"
        )
    return _intact(read_stats(default)), spec.name


def _intact(counts: Counts) -> Counts:
    """A build's counts, once its shards are checked to be the files its stats.json describes."""
    problems = changed_shards(counts)
    if problems:
        raise damaged_build(counts, problems)
    return counts


def _counts_origin(counts: Counts) -> str:
    """Which build (or table) the counts come from, named in full whichever way it was chosen."""
    origin = counts.origin
    if origin["kind"] != "stats":
        return f"{origin['path']} ({origin['kind']}, for planning)"
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(modified(origin["path"])))
    return (
        f"build statistics {origin['path']} (phase {counts.phase}, tokenizer {counts.tokenizer['name']}, "
        f"written {written})"
    )


def _warn(console: Console, recipe: Recipe, counts: Counts, compiled: Mixture) -> None:
    """Say what the user may not expect: languages without data, statistics of another recipe,
    streams repeated beyond reason, a temperature that sharpens instead of flattening."""
    if compiled.languages_without_data:
        missing = compiled.languages_without_data
        console.print(
            f"[yellow]note:[/yellow] {len(missing)} of the phase's languages have no counts "
            "and get no tokens: "
            f"{escape(', '.join(missing[:20]))}{' ...' if len(missing) > 20 else ''}"
        )
    if counts.recipe_sha256 and counts.recipe_sha256 != recipe.sha256:
        console.print(
            f"[yellow]note:[/yellow] the build used another version of the recipe "
            f"(sha256 {counts.recipe_sha256[:16]}...) than {escape(str(recipe.path))} "
            f"({recipe.sha256[:16]}...)"
        )
    repeated = sorted(
        (t for t in compiled.targets if (t.expected_epochs or 0) > REPEATS_WARNED),
        key=lambda t: (-t.expected_epochs, t.source, t.language),
    )
    if repeated:
        named = ", ".join(
            f"{t.source}/{t.language} ({t.expected_epochs:.3g}x)" for t in repeated[:REPEATED_NAMED]
        )
        streams = f"{len(repeated)} streams repeat their" if len(repeated) > 1 else "1 stream repeats its"
        console.print(
            f"[yellow]warning:[/yellow] {streams} data more than {REPEATS_WARNED} times: {escape(named)}"
            f"{' ...' if len(repeated) > REPEATED_NAMED else ''}; cap them with --max-epochs or train fewer "
            "--tokens"
        )
    if compiled.sampler == "temperature" and compiled.temperature > 1:
        console.print(
            f"[yellow]note:[/yellow] temperature {compiled.temperature:g} is above 1, so it sharpens the "
            "mixture: the larger a language, the more than its natural share it gets (below 1 flattens, "
            "1 keeps the natural shares)"
        )


def _phase_series(
    console: Console, recipe: Recipe, counts: Counts, compiled: Mixture, output: str | Path | None, pool: dict
) -> list[tuple[str, dict[str, float]]]:
    """Every recipe phase's pool shares, the compiled phase as compiled and the others from their manifests.

    A build's counts are that phase's build alone, so another phase's shares come
    from what it was compiled to (its languages join ``pool``, the x axis). A
    planning table is every phase's pool, so there the others are compiled over it.
    """
    scale = compiled.tokens / recipe.phase(compiled.phase).tokens
    series = []
    for name, spec in recipe.phases.items():
        if name == compiled.phase:
            series.append((f"{name}, tau {compiled.temperature:g}", compiled.pool_shares()))
        elif counts.data_root is None:
            try:
                here = compile_phase(recipe, name, counts, tokens=round(spec.tokens * scale))
            except MixtureError as err:
                raise MixtureError(f"--plot: phase {name} over these counts: {err}") from err
            series.append((f"{name}, tau {here.temperature:g}", here.pool_shares()))
        else:
            places = [join(parent(output), f"{name}.json")] if output else []
            places.append(join(parent(counts.data_root), name, "manifest.json"))
            series += _manifest_series(console, name, places, pool)
    return series


def _manifest_series(
    console: Console, phase: str, places: list[str], pool: dict
) -> list[tuple[str, dict[str, float]]]:
    """``phase``'s pool shares from the first of ``places`` that holds its manifest (none: a note)."""
    path = next((place for place in places if exists(place)), None)
    if path is None:
        console.print(
            f"[yellow]note:[/yellow] --plot: no manifest of phase {phase} at "
            f"{escape(' or '.join(map(str, places)))}, so it is not drawn; compile it there first"
        )
        return []
    manifest = load_manifest(path)
    sampling = manifest.sampling
    streams = [s for s in manifest.streams if s.source == sampling.multilingual_source]
    for stream in streams:
        pool.setdefault(stream.language, stream.available_tokens or 0)
    console.print(f"plot: phase {phase} from {escape(str(path))}")
    shares = pool_shares(streams, sampling.multilingual_source, sampling.multilingual_tokens)
    return [(f"{phase}, tau {sampling.temperature:g}", shares)]


def validate(
    manifests: list[str] = typer.Argument(
        ...,
        metavar="MANIFEST...",
        help="Manifests to check: local files, s3:// or hf:// URLs.",
        callback=location,
    ),
    hashes: bool = typer.Option(
        True, "--hash/--no-hash", help="Hash every shard (--no-hash: sizes, and one schema per stream)."
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="The tokenizer.json (or its directory, or name) the shards must be made with.",
    ),
) -> None:
    """Check manifests and their shards: fingerprint, every shard present, unchanged and of one tokenizer.

    Exits 1 if any manifest has a problem."""
    console = Console(soft_wrap=True)
    valid = True
    for manifest in manifests:
        try:
            valid &= _validate(console, manifest, hashes, tokenizer)
        except (MixtureError, RecipeError, OSError, StorageError) as err:
            _fail(err)
    if not valid:
        raise typer.Exit(1)


def _validate(console: Console, manifest: Path | str, hashes: bool, tokenizer: str | None) -> bool:
    """Print whether ``manifest`` is valid, or its first problems; return whether it is."""
    problems = validate_manifest(manifest, check_hashes=hashes, tokenizer=tokenizer)
    if problems:
        err = Console(stderr=True, soft_wrap=True)
        err.print(
            f"[red]{escape(str(manifest))}: {len(problems)} problem{'s' if len(problems) > 1 else ''}[/red]"
        )
        for problem in problems[:PROBLEMS_SHOWN]:
            err.print(f"  {escape(problem)}")
        if len(problems) > PROBLEMS_SHOWN:
            err.print(f"  ... and {len(problems) - PROBLEMS_SHOWN} more")
        return False
    checked = (
        "content sha256 and schema of every shard"
        if hashes
        else "size of every shard (--hash checks content)"
    )
    console.print(f"{escape(str(manifest))}: valid (fingerprint, {checked}, tokenizer metadata)")
    return True
