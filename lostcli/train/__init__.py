"""Training: the shared Accelerate loop (bf16 on GPU, resumable checkpoints, EMA) and one task per stage
(VAE, teacher, RIDA, tokenizer, GPT, render classifier) that turns a batch into losses.

Layer (README, Code layout): imports `data`, `latent`, `models`, `teachers` and `bundle`; never `eval`,
`pipeline`, `batch` or `cli`, and they never import it (`bench`, `demo` and `cli` sit above)."""
