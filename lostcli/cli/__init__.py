"""The `lost` command line: one Typer group per module (dataset, vae, teacher, rida, tokenizer, gpt, eval,
bench, demo, ...). Commands parse and validate options, then call the packages below; no model or metric
code lives here.

Layer (README, Code layout): the top; it may import every package, and none imports it (`__main__` aside)."""
