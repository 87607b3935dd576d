"""Fast local inference: the continuous-batching engine, the offline LLM API, the chat REPL and the OpenAI server."""

from smollm3.infer.engine import BackgroundEngine, Engine, Request
from smollm3.infer.llm import LLM, build_engine, extend_context, load_for_inference
from smollm3.infer.sampling import SamplingParams

__all__ = ["LLM", "BackgroundEngine", "Engine", "Request", "SamplingParams", "build_engine", "extend_context",
           "load_for_inference"]
