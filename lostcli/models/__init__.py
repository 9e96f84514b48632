"""The networks of LoST, taking and returning tensors: the LoST tokenizer (encoder with causal registers,
in-context DiT decoder), flow / DDPM schedules and samplers, the RIDA student, the semantic teachers, the
text encoder, LoST-GPT and its diffusion head."""
