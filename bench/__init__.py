"""bench: the study runner, MLflow tracking, baselines, reports and the regression gate.

Entry points are modules: `python -m bench.run`, `bench.report`, `bench.check`; the suite's benchmarks
of itself are apart in bench.perf (`python -m bench.perf`, `bench.perf.scale`, ...).
"""
