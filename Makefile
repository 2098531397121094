.PHONY: setup demo test unit lint stack-down reliability-report bench

setup:            ## install dependencies and start the local Keystone + Neutron
	./scripts/setup

demo:             ## set everything up and run the end-to-end demo
	./scripts/demo

test:             ## the whole test suite (what CI runs)
	./scripts/test

unit:             ## unit tests only (no OpenStack needed)
	uv run --frozen pytest -m "not integration" tests/unit

lint:
	uv run --frozen ruff check src tests scripts simulators bench && uv run --frozen mypy

stack-down:       ## stop the local OpenStack (Keystone, Neutron, Ceilometer, Aodh) and rsyslog
	bash scripts/openstack/aodh.sh down
	bash scripts/openstack/stack.sh down
	bash scripts/rsyslog.sh down

reliability-report: ## write the last test run's figures into docs/reliability.md
	uv run --frozen python scripts/reliability_report.py

# The bench group (pika, oslo.messaging, matplotlib, py-spy) goes into an environment of
# its own under var/, so that `uv sync` of the development environment leaves it alone;
# without the dev group, so that osel runs with what an installation has (structlog, for
# one, imports rich when it is installed: a few MiB that production does not carry).
bench:            ## the benchmark: writes docs/performance.md, docs/performance.png
	bash scripts/openstack/stack.sh up
	UV_PROJECT_ENVIRONMENT=var/bench/venv uv run --frozen --no-dev --exact --group bench python -m bench
