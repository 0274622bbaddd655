"""The bundled multilingual sample corpus: small files laid out like the six hub sources.

`hub/` mirrors `hf://` (FineWeb2, DCLM, Dolmino, Wikipedia, OLMoE arXiv, StarCoderData) so
that the real readers run offline in `make demo` and in tests; `make_sample.py` regenerates
it and `manifest.csv` says which documents the pipeline is expected to drop and why.
"""
