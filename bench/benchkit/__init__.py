"""The pieces of bench/run.py: servers and storages, load workers, scenarios, tables."""
