pytest_plugins = ["tests.fixtures.postgresql", "tests.fixtures.servers"]
