# The two commands the README opens with:
#   make demo   set everything up, start triage serve on a throw-away data dir, replay sample_studies/, show them ranked
#   make test   set everything up (Python env, dcmtk, Orthanc, tmux, PostgreSQL) and run every test, slow ones included
.PHONY: demo test test-fast lint env

env:
	@./scripts/bootstrap

demo: env
	.venv/bin/triage demo

test: env
	./scripts/install-test-deps
	.venv/bin/triage realdata fetch >/dev/null
	.venv/bin/python -m pytest -m "" -q

# The quick loop while developing: skips tests marked slow (subprocesses, external servers).
test-fast: env
	.venv/bin/triage realdata fetch >/dev/null
	.venv/bin/python -m pytest -q

# Lint and format (ruff) and types (mypy), as configured in pyproject.toml; CI runs it before the tests.
# `.venv/bin/ruff format .` rewrites the tree as the check wants it.
lint: env
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
