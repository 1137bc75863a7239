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

# Animate the official demo pair (needs `xportrait download-weights` first)
demo:
    xportrait animate ../shared/media/xportrait_source.png ../shared/media/xportrait_driving.mp4 --best-frame 36 -o demo.mp4
