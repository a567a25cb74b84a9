pytest_plugins = [
    "tests.fixtures.postgresql",
    "tests.fixtures.sqlite",
    "tests.fixtures.servers",
]
