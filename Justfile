# xportrait tasks. `just test` is the test command CI runs.
set shell := ["bash", "-euo", "pipefail", "-c"]

export OMP_NUM_THREADS := "1"

# Run the whole test suite (CPU, no weights needed; uses the shared test data, XPORTRAIT_SHARED, when present)
# on two pytest-xdist workers, one torch thread each; tests marked xdist_group share a worker.
# Serially: `just test -n 0`; one file: `just test -n 0 tests/test_animate.py`.
test *ARGS:
    python -m pytest -q -n 2 --dist loadgroup {{ARGS}}

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

# Animate PORTRAIT with the motion of DRIVING into demo.mp4 (needs `xportrait download-weights` first);
# extra animate options follow, e.g. `just demo xportrait_source.png xportrait_driving.mp4 --best-frame 36`
demo PORTRAIT="" DRIVING="" *ARGS="":
    @if [ -z "{{PORTRAIT}}" ] || [ -z "{{DRIVING}}" ]; then echo "usage: just demo PORTRAIT DRIVING [animate options]  (a portrait image and a driving video)" >&2; exit 2; fi
    xportrait animate "{{PORTRAIT}}" "{{DRIVING}}" -o demo.mp4 {{ARGS}}
