"""Counts readers, language matching and phase compilation, including planning over FineWeb2's table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mixtures.compiler import compile_phase
from mixtures.counts import load_stats, read_counts_csv, read_stats
from mixtures.errors import MixtureError
from mixtures.languages import select_languages
from mixtures.recipe import load_recipe
from mixtures.sampling import SAMPLERS, Sampler, capped_allocation, temperature_weights
from mixtures.table import languages_table
from tests.fixtures import DECAY_STREAMS, TOKENIZER, write_build

FINEWEB2_TABLE = Path(__file__).resolve().parents[2] / "../shared/data/fineweb2-language-distribution.csv"
FINEWEB2_HEADER = (
    "subset,split,code,script,name,family,words,documents,utf8_bytes,utf8_bytes_human,"
    "parquet_bytes,parquet_bytes_human,bible_ratio,wiki_ratio"
)


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


@pytest.fixture()
def build(tmp_path):
    return write_build(tmp_path / "data")


def test_read_stats_keeps_streams_shards_and_identity(build):
    counts = read_stats(build)
    assert counts.phase == "decay"
    assert counts.data_root == build.resolve()
    assert counts.tokenizer == TOKENIZER
    fra = next(s for s in counts.streams if (s.source, s.language) == ("fineweb2", "fra_Latn"))
    assert fra.tokens == 5000
    assert [shard["path"] for shard in fra.shards] == [
        "fineweb2/fra_Latn/00000.arrow",
        "fineweb2/fra_Latn/00001.arrow",
    ]
    assert set(fra.shards[0]) == {"path", "documents", "tokens", "bytes", "sha256"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(format="something"), "format"),
        (lambda s: s.update(version=2), r"version: expected 3, got 2; build the phase again"),
        (lambda s: s["streams"][1].update(tokens="many"), r"streams\[1\] \(fineweb2/deu_Latn\): tokens"),
        (lambda s: s["streams"][0]["shards"][1].update(sha256="xyz"), r"streams\[0\].*shards\[1\]: sha256"),
        (lambda s: s["streams"][0]["shards"][0].pop("bytes"), r"shards\[0\]: bytes"),
        (lambda s: s["streams"][0].update(tokens=1), "tokens is 1 but its shards hold 5000"),
        (
            lambda s: s["streams"][0].pop("heldout"),
            r"streams\[0\] \(fineweb2/fra_Latn\): heldout: expected a list",
        ),
        (lambda s: s["streams"][0].update(heldout_tokens=3), "heldout_tokens is 3 but its shards hold 0"),
        (lambda s: s["streams"].append(s["streams"][0]), "fineweb2/fra_Latn appears twice"),
    ],
)
def test_malformed_stats_name_the_field(build, edit, message):
    path = build / "stats.json"
    stats = json.loads(path.read_text())
    edit(stats)
    path.write_text(json.dumps(stats))
    with pytest.raises(MixtureError, match=message) as err:
        read_stats(build)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("field", "value"), [("format", "something"), ("version", 1)])
def test_load_stats_checks_format_and_version_as_read_stats_does(build, field, value):
    path = build / "stats.json"
    assert load_stats(build)["phase"] == "decay"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(MixtureError, match=field) as err:
        load_stats(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_fineweb2_table_uses_train_split_and_bytes_per_token(tmp_path):
    table = tmp_path / "dist.csv"
    table.write_text(
        FINEWEB2_HEADER
        + "\nfra_Latn,train,fra,Latn,French,Indo-European,10,2,7000000000,7GB,1,1,-,-"
        + "\nfra_Latn,test,fra,Latn,French,Indo-European,10,2,999999,1MB,1,1,-,-"
        + "\nfra_Latn_removed,train,fra,Latn,French,Indo-European,-,2,888888,1MB,1,1,-,-"
        + "\nsrp_Cyrl,train,srp,Cyrl,Serbian,Indo-European,10,2,5000000000,5GB,1,1,-,-"
        + "\nxyz_Zzzz,train,xyz,Zzzz,Test,-,10,2,3500000000,3.5GB,1,1,-,-"
        + "\nfao_Latn,train,fao,Latn,Faroese,Indo-European,10,2,592000000,592MB,1,1,-,-\n"
    )
    counts = read_counts_csv(table, "fineweb2")
    assert {s.language: s.tokens for s in counts.streams} == {
        "fra_Latn": 2_000_000_000,  # 3.5 bytes per token (Latin script)
        "srp_Cyrl": 1_000_000_000,  # 5.0 (Cyrillic)
        "xyz_Zzzz": 1_000_000_000,  # 3.5 (a script without an estimate)
        "fao_Latn": 236_800_000,  # 2.5: a subset under 1 GB, whatever its script
    }
    assert counts.data_root is None and counts.origin["kind"] == "fineweb2-table"
    override = read_counts_csv(table, "fineweb2", {"Latn": 7.0})
    assert {s.language: s.tokens for s in override.streams}["fra_Latn"] == 1_000_000_000
    assert override.origin["bytes_per_token"]["Latn"] == 7.0


def test_plain_csv_and_its_errors(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("language,tokens\nfra_Latn,1.5M\ndeu_Latn,2000\n")
    counts = read_counts_csv(plain, "fineweb2")
    assert {s.language: s.tokens for s in counts.streams} == {"fra_Latn": 1_500_000, "deu_Latn": 2000}
    plain.write_text("language,tokens\nfra_Latn,1.5M\ndeu_Latn,lots\n")
    with pytest.raises(MixtureError, match=r"plain.csv: line 3: tokens"):
        read_counts_csv(plain, "fineweb2")
    plain.write_text("lang,count\nfra_Latn,1\n")
    with pytest.raises(MixtureError, match=r"line 1: unrecognised header"):
        read_counts_csv(plain, "fineweb2")


def test_iso_code_matches_every_script_and_script_names_one():
    pool = ["srp_Cyrl", "srp_Latn", "fra_Latn"]
    assert select_languages(["srp"], pool).languages == ("srp_Cyrl", "srp_Latn")
    assert select_languages(["srp_Latn", "fra"], pool).languages == ("fra_Latn", "srp_Latn")
    assert select_languages(None, pool).languages == ("fra_Latn", "srp_Cyrl", "srp_Latn")


def test_names_covered_elsewhere_or_without_counts_are_not_errors():
    selection = select_languages(["eng", "fra", "jpn"], ["fra_Latn"], covered=["eng_Latn"])
    assert selection.languages == ("fra_Latn",)
    assert selection.without_data == ("jpn",)


def test_unknown_names_list_near_misses():
    with pytest.raises(
        MixtureError, match=r"--languages: unknown language names: 'fra_Latm' \(near misses: fra_Latn"
    ):
        select_languages(["fra_Latm", "srp"], ["fra_Latn", "srp_Cyrl"], where="--languages")
    with pytest.raises(MixtureError, match=r"'qqqqq' \(no near misses\)"):
        select_languages(["qqqqq"], ["fra_Latn"])


def test_decay_from_stats_splits_fixed_budgets_and_caps_the_pool(recipe, build):
    mixture = compile_phase(recipe, "decay", read_stats(build), tokens=10_000)
    targets = {(t.source, t.language): t for t in mixture.targets}
    assert set(targets) == set(DECAY_STREAMS)
    assert sum(t.target_tokens for t in mixture.targets) == 10_000
    # fixed budgets scale with the total: 3.3B/5.5B/6.9B/9.5B of 100B
    assert mixture.budgets == {"arxiv": 330, "code": 550, "dolmino": 690, "wikipedia": 950}
    assert mixture.multilingual_tokens == 10_000 - 330 - 550 - 690 - 950
    # wikipedia's budget is split over its languages in proportion to their tokens (1500 : 500),
    # the tie of 712.5 : 237.5 going to the first language in sorted order
    assert targets["wikipedia", "fra_Latn"].target_tokens == 712
    assert targets["wikipedia", "deu_Latn"].target_tokens == 238
    fao = targets["fineweb2", "fao_Latn"]
    assert fao.capped and fao.target_tokens == 20 and fao.expected_epochs == 1.0  # Decay-All: once
    pool = [t for t in mixture.targets if t.source == "fineweb2"]
    assert sum(math.isclose(mixture.weight(t), t.target_tokens / 10_000) for t in pool) == len(pool)
    assert math.isclose(sum(mixture.weight(t) for t in mixture.targets), 1.0)
    shares = mixture.pool_shares()
    assert (
        shares["fra_Latn"] > shares["deu_Latn"] > shares["srp_Cyrl"] > shares["srp_Latn"] > shares["fao_Latn"]
    )


def test_overrides_change_the_phase(recipe, build):
    counts = read_stats(build)
    hot = compile_phase(recipe, "decay", counts, tokens=10_000, temperature=1.0).pool_shares()
    cold = compile_phase(recipe, "decay", counts, tokens=10_000, temperature=0.1).pool_shares()
    assert hot["fra_Latn"] > cold["fra_Latn"]
    uni = compile_phase(recipe, "decay", counts, tokens=10_000, sampler="unimax")
    free = [t.target_tokens for t in uni.targets if t.source == "fineweb2" and not t.capped]
    assert max(free) - min(free) <= 1
    only_srp = compile_phase(recipe, "decay", counts, tokens=10_000, languages=["srp"], max_epochs=10)
    assert [t.language for t in only_srp.targets if t.source == "fineweb2"] == ["srp_Cyrl", "srp_Latn"]


def test_a_new_sampler_is_one_entry_of_the_table(recipe, build, monkeypatch):
    """A sampler added to SAMPLERS compiles and is named in the mixture table, with no other change."""

    def proportional(budget, sizes, caps, temperature):
        return capped_allocation(budget, [float(size) for size in sizes], caps)

    monkeypatch.setitem(SAMPLERS, "proportional", Sampler(proportional, "in proportion to size"))
    counts = read_stats(build)
    mixture = compile_phase(recipe, "decay", counts, tokens=10_000, max_epochs=1000, sampler="proportional")
    natural = compile_phase(recipe, "decay", counts, tokens=10_000, max_epochs=1000, temperature=1.0)
    assert mixture.sampler == "proportional"
    assert [t.language for t in mixture.targets] == [t.language for t in natural.targets]
    assert all(
        abs(ours.target_tokens - theirs.target_tokens) <= 1
        for ours, theirs in zip(mixture.targets, natural.targets, strict=True)
    )
    assert ", in proportion to size, " in languages_table(mixture, 5).title


def test_pool_that_cannot_fill_its_share_says_so(recipe, build):
    message = (
        r"phase decay, fineweb2: cannot fill a budget of 44,880 tokens: at most 20,000 fit .* its 1 stream "
    )
    with pytest.raises(MixtureError, match=message + r".*lower --tokens or raise --max-epochs"):
        compile_phase(recipe, "decay", read_stats(build), tokens=60_000, max_epochs=1000, languages=["fao"])


def test_fixed_budget_beyond_the_epoch_cap_is_an_error(recipe, tmp_path):
    streams = {**DECAY_STREAMS, ("wikipedia", "fra_Latn"): [150], ("wikipedia", "deu_Latn"): [50]}
    build = write_build(tmp_path / "data", streams=streams)
    message = r"phase decay, wikipedia: cannot fill a budget of 1,900 tokens: at most 1,000 fit within"
    with pytest.raises(MixtureError, match=message):
        compile_phase(recipe, "decay", read_stats(build), tokens=20_000, max_epochs=5)
    assert compile_phase(recipe, "decay", read_stats(build), tokens=20_000, max_epochs=10).tokens == 20_000


def test_fixed_source_missing_from_the_build_is_an_error(recipe, tmp_path):
    streams = {key: value for key, value in DECAY_STREAMS.items() if key[0] != "arxiv"}
    build = write_build(tmp_path / "data", streams=streams)
    with pytest.raises(
        MixtureError, match="phase decay, arxiv: a budget of 330 tokens but the build statistics"
    ):
        compile_phase(recipe, "decay", read_stats(build), tokens=10_000)


def test_recipe_languages_without_counts_are_reported_not_fatal(recipe, tmp_path):
    streams = {
        ("fineweb2", "fra_Latn"): [4000],
        ("fineweb2", "deu_Latn"): [3000],
        ("dclm", "eng_Latn"): [9000],
    }
    streams |= {(source, "eng_Latn"): [9000] for source in ("arxiv", "dolmino", "wikipedia")}
    streams[("code", "zxx_Zyyy")] = [9000]
    build = write_build(tmp_path / "data", phase="pretrain", streams=streams)
    mixture = compile_phase(recipe, "pretrain", read_stats(build), tokens=20_000)
    assert not {"eng", "zxx_Zyyy"} & set(mixture.languages_without_data)  # from DCLM and code
    assert "rus" in mixture.languages_without_data and len(mixture.languages_without_data) == 57
    assert {t.language for t in mixture.targets if t.source == "fineweb2"} == {"fra_Latn", "deu_Latn"}


def test_planning_gives_fixed_sources_one_stream_without_shards(recipe, tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("language,tokens\nfra_Latn,1B\ndeu_Latn,500M\nfao_Latn,1M\n")
    mixture = compile_phase(recipe, "decay", read_counts_csv(plain, "fineweb2"), tokens=1_000_000_000)
    fixed = {(t.source, t.language): t for t in mixture.targets if t.source != "fineweb2"}
    assert set(fixed) == {
        ("arxiv", "eng_Latn"),
        ("code", "zxx_Zyyy"),
        ("dolmino", "eng_Latn"),
        ("wikipedia", "mul"),
    }
    assert all(t.available_tokens is None and not t.shards for t in fixed.values())


@pytest.mark.skipif(not FINEWEB2_TABLE.exists(), reason=f"FineWeb2's table is not at {FINEWEB2_TABLE}")
def test_decay_over_fineweb2s_table_caps_the_tiniest_languages(recipe):
    counts = read_counts_csv(FINEWEB2_TABLE, "fineweb2")
    mixture = compile_phase(recipe, "decay", counts, temperature=0.3)
    pool = sorted((t for t in mixture.targets if t.source == "fineweb2"), key=lambda t: t.available_tokens)
    assert len(pool) >= 1800
    assert sum(t.target_tokens for t in mixture.targets) == 100_000_000_000
    assert all(t.target_tokens <= t.available_tokens for t in pool)  # Decay-All's one epoch
    uncapped_share = temperature_weights([t.available_tokens for t in pool], 0.3)
    for target, share in zip(pool[:100], uncapped_share[:100], strict=True):
        assert target.capped and target.target_tokens == target.available_tokens
        assert target.target_tokens < share * mixture.multilingual_tokens  # capped, not inflated
    largest = pool[-1]
    assert not largest.capped and largest.expected_epochs < 0.01


def test_a_budget_for_a_source_the_build_holds_nothing_of_says_build_it(recipe, tmp_path):
    streams = {key: tokens for key, tokens in DECAY_STREAMS.items() if key[0] != "arxiv"}
    build = write_build(tmp_path / "data", streams=streams)
    with pytest.raises(MixtureError) as caught:
        compile_phase(recipe, "decay", read_stats(build), tokens=10_000)
    message = str(caught.value)
    assert message.startswith("phase decay, arxiv: a budget of") and "hold none of this source" in message
    assert "set its budget to 0 in the recipe" in message and "--max-epochs" not in message
