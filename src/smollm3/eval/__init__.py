"""Evaluation: task definitions (tasks.py) and the runner (runner.py); `smollm3 eval` on the command line."""

from smollm3.eval.runner import format_table, run_eval
from smollm3.eval.tasks import EvalError, available, parse_tasks

__all__ = ["EvalError", "available", "format_table", "parse_tasks", "run_eval"]
