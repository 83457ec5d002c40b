"""The suite's benchmarks of itself, apart from the product in bench/: speed, scale-out and tracking overhead.

Each module is a command: `python -m bench.perf` (training speed), `bench.perf.scale`, `bench.perf.overhead`,
`bench.perf.replicates`, `bench.perf.step_ab`, `bench.perf.gpu_check`. Importing this package does no work.
"""
