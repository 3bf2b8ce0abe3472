"""Side-by-side benchmark: RecBole recommenders and GenLMM on one split, one table, one gallery."""
from recbole_gen.comparison.runner import BenchmarkError, load_preset, plan_rows, run_benchmark

__all__ = ["BenchmarkError", "load_preset", "plan_rows", "run_benchmark"]
