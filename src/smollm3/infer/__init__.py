"""Fast local inference: the continuous-batching engine, the offline LLM API, the chat REPL and the OpenAI server."""

from smollm3.infer.engine import LLM, BackgroundEngine, Engine, Request, extend_context, load_for_inference
from smollm3.infer.sampling import SamplingParams

__all__ = ["LLM", "BackgroundEngine", "Engine", "Request", "SamplingParams", "extend_context", "load_for_inference"]
