.PHONY: setup demo test unit lint stack-down

setup:            ## install dependencies and start the local Keystone + Neutron
	./scripts/setup

demo:             ## set everything up and run the end-to-end demo
	./scripts/demo

test:             ## the whole test suite (what CI runs)
	./scripts/test

unit:             ## unit tests only (no OpenStack needed)
	uv run --frozen pytest -m "not integration" tests/unit

lint:
	uv run --frozen ruff check src tests scripts && uv run --frozen mypy

stack-down:       ## stop the local Keystone + Neutron
	bash scripts/openstack/stack.sh down
