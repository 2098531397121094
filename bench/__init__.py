"""The benchmark of osel against the real RabbitMQ, PostgreSQL/SQLite and Neutron.

`python -m bench` (or `make bench`) runs every part in one go and writes
`var/bench/results.json`, `docs/performance.png` and `docs/performance.md`.
"""
