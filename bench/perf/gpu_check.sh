#!/usr/bin/env bash
# The GPU figures of issue 12, for a machine with one CUDA GPU: run from the repository root with
# VAE_DATA_DIR set; writes everything under ${OUT:-gpu-check}/ and prints a summary.
#   1. bench.perf.gpu_check: fit's epoch time against the GPU matmul floor, stacked vs sequential replicates (~2 min)
#   2. the latent study on the GPU, timed (--device cuda; ~10 min budget, cut at 540 s)
set -u
OUT=$(realpath -m "${OUT:-gpu-check}")
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv | tee "$OUT/nvidia-smi.csv"
echo "cpu cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
timeout 240 python -m bench.perf.gpu_check --device cuda --json "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.txt"
study_dir=$(mktemp -d)
start=$(date +%s.%N)
( cd "$study_dir" && timeout 540 /usr/bin/time -v python -m bench.run --study latent --device cuda --no-progress \
    > "$OUT/latent.txt" 2> "$OUT/latent.err" )
rc=$?
end=$(date +%s.%N)
echo "latent study on cuda: exit $rc, wall $(python -c "print(f'{$end - $start:.1f}')") s (124: cut at 540 s)" | tee -a "$OUT/latent.txt"
grep -E "trials finished|best trial|Maximum resident" "$OUT/latent.txt" "$OUT/latent.err" || true
