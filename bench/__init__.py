"""bench: the study runner, MLflow tracking, baselines, reports and the regression gate.

Entry points are modules: `python -m bench.run`, `bench.report`, `bench.check`, `bench.perf`.
"""
