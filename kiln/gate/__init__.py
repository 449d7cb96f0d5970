"""The gate: one verdict on an artifact against eager (parity on every output, the task metric,
generated tokens and perplexity), used alike by `kiln build`, `kiln verify` and golden sets."""
