"""Data pipeline: datatrove stages that turn multilingual sources into per-language token shards."""
