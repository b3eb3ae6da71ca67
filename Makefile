# The two commands a new machine needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-preview demo model bench bench-quick clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q Testing

# The tests that use Slicer's MRML again, on the preview's slicer-core (a second venv; not in CI:
# run it before a release and when the preview moves).
PREVIEW_VENV ?= build/venv-preview
PREVIEW_PY := $(PREVIEW_VENV)/bin/python
SLICER_TESTS := Testing/test_mrml_bridge.py Testing/test_logic.py Testing/test_module_static.py Testing/test_images.py
$(PREVIEW_VENV)/.installed: requirements.txt requirements-preview.txt pyproject.toml
	test -x $(PREVIEW_PY) || $(PYTHON) -m venv $(PREVIEW_VENV)
	$(PREVIEW_PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PREVIEW_PY) -m pip install --quiet --disable-pip-version-check -r requirements-preview.txt
	$(PREVIEW_PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test-preview: $(PREVIEW_VENV)/.installed
	$(PREVIEW_PY) -m pytest -q -p no:cacheprovider $(SLICER_TESTS)

# demo_output/ is the demo's own scratch folder: it is cleared so the demo can be rerun.
# The real case (a 4.5 MB wheel, CC BY-NC-SA 4.0: never committed) is fetched once into
# build/real_case; offline, the demo says so and runs on phantoms.
REAL_CASE := liver-ct-segmentation-package==1.6.0
demo: venv
	rm -rf demo_output
	ls build/real_case/*.whl >/dev/null 2>&1 || $(PY) -m pip download --no-deps --quiet --disable-pip-version-check \
		$(REAL_CASE) -d build/real_case || echo "could not download $(REAL_CASE): the demo runs on phantoms"
	$(VENV)/bin/livertumorseg demo --out demo_output --real-case build/real_case

# Rebuild the shipped default model in Resources/Models/default (reproducible: fixed seeds).
model: venv
	$(PY) scripts/build_default_model.py

# The full evidence run (several hours on 2 cores; see benchmarks/RESULTS.md).
bench: venv
	OMP_NUM_THREADS=1 $(PY) benchmarks/real_case.py --seeds 0 1 2 --threads 1
	$(PY) benchmarks/small_data.py
	$(PY) benchmarks/method_changes.py
	$(PY) benchmarks/method_changes.py --chain grid --seeds 0 1
	$(PY) benchmarks/method_changes.py --chain retrain --steps 600
	$(PY) benchmarks/small_tumor_visibility.py
	$(PY) benchmarks/speed.py

bench-quick: venv
	$(PY) benchmarks/small_data.py --quick
	$(PY) benchmarks/speed.py --quick

clean:
	rm -rf $(VENV) $(PREVIEW_VENV) demo_output .pytest_cache
