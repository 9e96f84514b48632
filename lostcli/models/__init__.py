"""The networks of LoST, taking and returning tensors: the LoST tokenizer (encoder with causal registers,
in-context DiT decoder), flow / DDPM schedules and samplers, the RIDA student, the semantic teachers, the
text encoder, LoST-GPT and its diffusion head, the render classifier; each saved and loaded as a model folder.

Layer (README, Code layout): imports only `config`, `errors`, `persist`, `data` and `latent`. Loading by spec
(hub names, `timm:` / `open_clip:` strings, environment variables, third-party logging) is `teachers`, above."""
