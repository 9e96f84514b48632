"""Training: the shared Accelerate loop (bf16 on GPU, resumable checkpoints, EMA) and one task per stage
(VAE, teacher, RIDA, tokenizer, GPT, render classifier) that turns a batch into losses."""
