"""Only the C extension lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "parsec_server.api._msgcheck",
            sources=["src/parsec_server/api/_msgcheck.c"],
            extra_compile_args=["-O2"],
        )
    ]
)
