# xportrait tasks. `just test` is the test command CI runs.
set shell := ["bash", "-euo", "pipefail", "-c"]

export OMP_NUM_THREADS := "1"

# Run the whole test suite (CPU, no weights needed; reads ../shared when present)
test *ARGS:
    python -m pytest -q {{ARGS}}

# Lint and format check
lint:
    ruff check .
    ruff format --check .

# Benchmarks: print figures and write bench-results.json
bench:
    python benchmarks/run.py

# Full-size rehearsal on the CPU (a seeded 12 GB checkpoint, built once in XPORTRAIT_BENCH_CACHE;
# download-weights, animate fp32/bf16/fp16, forwards against stock diffusers): bench-fullscale.json
bench-fullscale *ARGS:
    python benchmarks/fullscale.py {{ARGS}}

# Animate the official demo pair (needs `xportrait download-weights` first)
demo:
    xportrait animate ../shared/media/xportrait_source.png ../shared/media/xportrait_driving.mp4 --best-frame 36 -o demo.mp4
