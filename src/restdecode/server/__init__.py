"""`restdecode serve`: an OpenAI-compatible HTTP server over the lossless engine.

``app`` (FastAPI routes, auth, errors) never blocks on the model; ``scheduler`` owns the engine
and runs the decoding loop in one thread; ``protocol`` checks requests and shapes responses as
OpenAI documents them; ``memory`` is the learned memory (served outputs, per tenant).
"""
