"""`lost app`: a local web page (Gradio, the optional `app` extra) to generate shapes from text, tokenize a
mesh and slide through the decodes of its prefixes, and complete a shape from its first tokens.

`session` does the work without any web framework (and is what the tests call directly); `ui` builds the
page over it; `server` starts and stops it. Layer (README, Code layout): beside `bench` and `demo`, below `cli`.
"""
