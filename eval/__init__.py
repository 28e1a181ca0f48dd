"""Evaluation: classical MI baselines, the benchmark harness, plots and the speed benchmark.

    python -m eval.harness --store DIR --out DIR [--estimators model,ksg,...]
    python -m eval.bench_speed

eval/ may import metagen (to read test stores) and infer (the model); nothing under
model/ or infer.py imports eval.
"""
