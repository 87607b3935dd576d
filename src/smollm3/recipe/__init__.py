"""Whole recipes: `smollm3 recipe run NAME|FILE.yaml --out DIR` (run.py), the data a miniature recipe builds for
itself (build.py), the evaluation of every stage (evaluate.py) and the report (report.py)."""
